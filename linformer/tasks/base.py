"""The interface between a task and the training loop."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping

import jax
import numpy as np
from flax import nnx

from linformer.config import ModelConfig


def totals(outputs: list[Mapping[str, np.ndarray]], *keys: str) -> dict[str, float]:
  """Each of `keys` summed over the batches' `eval_outputs`: every task's outputs are sums over
  its predictions (with their `weight`), so batches and hosts add up exactly."""
  return {k: float(np.sum([o[k] for o in outputs])) for k in keys}


class Task(abc.ABC):
  """Everything task-specific; the training loop does the rest.

  Losses are returned as sums with a `weight` (the number of predictions), so the loop can add
  micro-batches and data-parallel shards and divide once: the gradient of a batch does not depend
  on how it was split.
  """

  name: str
  # Top-level parts of the model a warm start (`config.init_from`) copies; None: all of it.
  init_subtrees: tuple[str, ...] | None = None

  def __init__(self, config):
    self.config = config

  @abc.abstractmethod
  def setup(
    self, workdir: str, per_host_batch_size: int, init_tokenizer: str | None = None
  ) -> None:
    """Prepares tokenizer and datasets (saved in/reused from `workdir`). `init_tokenizer` is the
    warm-start source's tokenizer, used when the workdir has none yet."""

  @abc.abstractmethod
  def model_config(self) -> ModelConfig:
    """The model's configuration, completed with what the data decides (e.g. vocab size)."""

  @abc.abstractmethod
  def make_model(self, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The encoder with this task's head."""

  @abc.abstractmethod
  def train_iterator(self) -> Iterator[Mapping[str, np.ndarray]]:
    """This process's training batches, endless, with grain-checkpointable state."""

  # '{split}/{metric}' of `eval_summary` that picks the best checkpoint (higher is better).
  main_metric: str | None = None

  def eval_splits(self) -> list[str]:
    return ["validation"]

  @abc.abstractmethod
  def eval_batches(self, split: str) -> Iterable[Mapping[str, np.ndarray]]:
    """This process's batches of an eval split, one pass, full size (padded, zero weight)."""

  def fit_batch(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """A host batch as the model runs it (train, eval and prediction); fine-tuning cuts it to
    its length bucket. Every host must return the same shapes."""
    return batch

  def num_eval_batches(self, split: str) -> int | None:
    """How many batches `eval_batches(split)` gives, for the progress bar; None: unknown."""
    return None

  @abc.abstractmethod
  def loss(
    self, model, batch, *, deterministic: bool, rngs: nnx.Rngs | None
  ) -> dict[str, jax.Array]:
    """Sums over the batch: at least `loss` (to differentiate) and `weight`."""

  def eval_outputs(self, model, batch) -> dict[str, jax.Array]:
    """What one evaluation batch contributes; by default the loss sums."""
    return self.loss(model, batch, deterministic=True, rngs=None)

  # A frozen full-attention teacher (tasks/distill.py; config.transfer_steps, config.distill):
  # the tasks that support one implement these three.
  def transfer_loss(self, model, teacher, batch) -> dict[str, jax.Array]:
    """Sums of the attention-transfer loss (`loss`, `weight`)."""
    raise NotImplementedError(f"task {self.name!r} has no attention transfer")

  def distill_loss(self, model, teacher, batch, *, deterministic, rngs) -> dict[str, jax.Array]:
    """`loss` with the teacher's distillation terms added."""
    raise NotImplementedError(f"task {self.name!r} has no distillation")

  def teacher_eval_outputs(self, model, teacher, batch) -> dict[str, jax.Array]:
    """What an evaluation batch adds when the run has a teacher."""
    return {}

  @abc.abstractmethod
  def summarize(self, outputs: list[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Metrics from the `eval_outputs` of every validation batch (host numpy)."""

  def eval_summary(
    self, outputs_by_split: Mapping[str, list[Mapping[str, np.ndarray]]]
  ) -> dict[str, float]:
    """Metrics of every eval split from its batches' `eval_outputs`."""
    return {
      f"{split}/{k}": v
      for split, outputs in outputs_by_split.items()
      for k, v in self.summarize(outputs).items()
    }

  def num_train_examples(self) -> int | None:
    """Examples in one epoch, for configs that give num_epochs instead of steps."""
    return None

  @abc.abstractmethod
  def train_flops_per_sequence(self, cfg: ModelConfig, n: int | None = None) -> float:
    """Model FLOPs of one training sequence of n tokens (None: the model's max_len), forward and
    backward (`linformer.flops`)."""

  def tokens_in(self, batch) -> int:
    """Real tokens in a batch, for tokens/s."""
    return int(np.asarray(batch["attention_mask"]).sum())
