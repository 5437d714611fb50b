"""The interface between a task and the training loop."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping

import jax
import numpy as np
from flax import nnx

from linformer.config import ModelConfig


class Task(abc.ABC):
  """Everything task-specific; `linformer.training.loop` does the rest.

  Losses are returned as sums with a `weight` (the number of predictions), so the loop can add
  micro-batches and data-parallel shards and divide once: the gradient of a batch does not depend
  on how it was split.
  """

  name: str

  def __init__(self, config):
    self.config = config

  @abc.abstractmethod
  def setup(self, workdir: str, per_host_batch_size: int) -> None:
    """Prepares tokenizer and datasets (saved in/reused from `workdir`)."""

  @abc.abstractmethod
  def model_config(self) -> ModelConfig:
    """The model's configuration, completed with what the data decides (e.g. vocab size)."""

  @abc.abstractmethod
  def make_model(self, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The encoder with this task's head."""

  @abc.abstractmethod
  def train_iterator(self) -> Iterator[Mapping[str, np.ndarray]]:
    """This process's training batches, endless, with grain-checkpointable state."""

  @abc.abstractmethod
  def eval_batches(self) -> Iterable[Mapping[str, np.ndarray]]:
    """This process's validation batches, one pass, full size (padded with zero weight)."""

  @abc.abstractmethod
  def loss(self, model, batch, *, deterministic: bool,
           rngs: nnx.Rngs | None) -> dict[str, jax.Array]:
    """Sums over the batch: at least `loss` (to differentiate) and `weight`."""

  def initialize(self, state, trainer):
    """A fresh run's state before step 1; fine-tuning loads pretrained weights here."""
    return state

  def eval_outputs(self, model, batch) -> dict[str, jax.Array]:
    """What one evaluation batch contributes; by default the loss sums."""
    return self.loss(model, batch, deterministic=True, rngs=None)

  @abc.abstractmethod
  def summarize(self, outputs: list[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Metrics from the `eval_outputs` of every validation batch (host numpy)."""

  def eval_summary(self, outputs: list[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Validation metrics; by default the same summary as training's."""
    return self.summarize(outputs)

  def tokens_in(self, batch) -> int:
    """Real tokens in a batch, for tokens/s."""
    return int(np.asarray(batch["attention_mask"]).sum())
