"""Fine-tuning: GLUE, IMDB and ListOps classification (and STS-B regression).

The encoder comes from a pretraining workdir (`config.init_from`: its weights and its
tokenizer) or is trained from scratch; the classification head is new. Metrics are computed on
the host from every example's prediction, with the functions in `linformer.metrics`.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from linformer import metrics as metrics_lib
from linformer.config import ConfigError, ModelConfig
from linformer.data import classification
from linformer.data.tokenizer import Tokenizer
from linformer.model import SequenceClassifier
from linformer.tasks.base import Task
from linformer.training import checkpointing

# Model fields that may differ from the pretraining run: they do not change parameter shapes.
FREE_MODEL_FIELDS = ("dropout_rate", "attention_dropout_rate", "dtype", "remat", "attention_impl")


class FinetuneTask(Task):
  name = "finetune"

  def setup(self, workdir: str, per_host_batch_size: int) -> None:
    c = self.config
    self.spec = classification.spec_from_config(c.data)
    self.main_metric = self.spec.main_metric
    self.per_host_batch_size = per_host_batch_size
    if c.init_from:
      self._check_pretrained_shape()
    self.tokenizer = self._tokenizer(workdir)
    self._data = None

  @property
  def data(self) -> classification.ClassificationData:
    """Built on first use, so prediction needs no dataset."""
    if self._data is None:
      self._data = classification.build_classification_data(
          self.config.data, self.tokenizer, seq_len=self.config.model.max_len,
          per_host_batch_size=self.per_host_batch_size, seed=self.config.seed, spec=self.spec)
    return self._data

  def _tokenizer(self, workdir: str) -> Tokenizer:
    """The run's saved tokenizer, else the pretraining run's, else ListOps's or the configured
    tokenizer.json; saved in the workdir for resume and prediction."""
    saved = os.path.join(workdir, "tokenizer")
    if os.path.isdir(saved) and os.listdir(saved):
      return Tokenizer.load(saved)
    c = self.config
    if c.init_from:
      tokenizer = Tokenizer.load(os.path.join(c.init_from, "tokenizer"))
    elif c.data.tokenizer:
      tokenizer = Tokenizer.load(c.data.tokenizer)
    elif self.spec.name == "listops":
      from linformer.data.listops import listops_tokenizer

      tokenizer = listops_tokenizer()
    else:
      raise ConfigError(
          "Fine-tuning needs a tokenizer: set config.init_from to a pretraining workdir (its "
          "tokenizer and weights are used), or config.data.tokenizer to a tokenizer.json to "
          "train from scratch.")
    if jax.process_index() == 0:
      tokenizer.save(saved)
    return tokenizer

  def _check_pretrained_shape(self) -> None:
    c = self.config
    try:
      pre = checkpointing.load_config(c.init_from)
    except FileNotFoundError as e:
      raise ConfigError(f"config.init_from={c.init_from!r}: {e}") from None
    differ = [f"{k}: pretrained {pre.model.get(k)!r}, asked {v!r}"
              for k, v in c.model.items()
              if k not in FREE_MODEL_FIELDS and _normal(pre.model.get(k)) != _normal(v)]
    if differ:
      raise ConfigError(
          f"config.init_from={c.init_from!r} holds a model of a different shape than "
          f"config.model ({'; '.join(differ)}). Use the pretraining run's model fields "
          "(e.g. the same size=, n=, k= config-string values).")

  def model_config(self) -> ModelConfig:
    return ModelConfig.from_dict({**self.config.model.to_dict(),
                                  "vocab_size": self.tokenizer.vocab_size})

  def make_model(self, cfg, rngs):
    return SequenceClassifier(cfg, self.spec.num_labels, rngs=rngs)

  def initialize(self, state, trainer):
    """Copies the pretrained encoder (parameters and fixed projections) into a fresh state."""
    if not self.config.init_from:
      return state
    manager = checkpointing.make_manager(self.config.init_from, self.config)
    step = manager.latest_step()
    if step is None:
      raise ConfigError(f"config.init_from={self.config.init_from!r} has no checkpoint: "
                        "pretrain it first (or wait for its first checkpoint).")
    saved = checkpointing.restore_raw(manager, step)
    return state.replace(params=_copy_encoder(state.params, saved["params"]),
                         rest=_copy_encoder(state.rest, saved["rest"]))

  def train_iterator(self):
    return self.data.train_iter

  def num_train_examples(self):
    return self.data.num_train_examples

  def eval_splits(self):
    return list(self.spec.eval_split_names)

  def eval_batches(self, split):
    return self.data.eval_batches(split)

  def _logits(self, model, batch, deterministic, rngs):
    types = batch.get("token_type_ids") if model.cfg.type_vocab_size else None
    return model(batch["input_ids"], batch["attention_mask"], types,
                 deterministic=deterministic, rngs=rngs)

  def loss(self, model, batch, *, deterministic, rngs):
    return self._sums(self._logits(model, batch, deterministic, rngs), batch)

  def _sums(self, logits, batch):
    w = batch["weights"]
    if self.spec.is_regression:
      per_example = (logits[:, 0] - batch["labels"]) ** 2
      correct = jnp.zeros_like(per_example)
    else:
      per_example = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
      correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
    return {"loss": jnp.sum(per_example * w), "correct": jnp.sum(correct * w),
            "weight": jnp.sum(w)}

  def eval_outputs(self, model, batch):
    logits = self._logits(model, batch, True, None)
    return {**self._sums(logits, batch), "logits": logits, "labels": batch["labels"],
            "weights": batch["weights"]}

  def summarize(self, outputs):
    total = {k: float(np.sum([o[k] for o in outputs])) for k in ("loss", "correct", "weight")}
    summary = {"loss": total["loss"] / max(total["weight"], 1.0)}
    if not self.spec.is_regression:
      summary["accuracy"] = total["correct"] / max(total["weight"], 1.0)
    return summary

  def eval_summary(self, outputs_by_split):
    result = {}
    for split, outputs in outputs_by_split.items():
      cat = lambda k: np.concatenate([o[k] for o in outputs])
      predictions = metrics_lib.predictions_from_logits(cat("logits"), self.spec.num_labels)
      scores = metrics_lib.compute_metrics(self.spec.metrics, predictions, cat("labels"),
                                           weights=cat("weights"))
      scores["loss"] = self.summarize(outputs)["loss"]
      result.update({f"{split}/{name}": value for name, value in scores.items()})
    return result

  def predict(self, model, text: str, text_pair: str | None = None) -> dict:
    """The label (or score) of one input, with its probability."""
    batch = classification.encode_for_prediction(
        self.spec, self.tokenizer, text, text_pair, seq_len=self.config.model.max_len,
        truncation=self.config.data.truncation, head_tokens=self.config.data.head_tokens,
        pair_template=self.config.data.pair_template)
    logits = np.asarray(self._logits(model, batch, True, None))[0]
    if self.spec.is_regression:
      return {"task": self.spec.name, "score": float(logits[0])}
    probs = np.asarray(jax.nn.softmax(logits))
    label = int(np.argmax(probs))
    return {"task": self.spec.name, "label": label, "label_name": self.spec.label_names[label],
            "probability": float(probs[label]),
            "probabilities": dict(zip(self.spec.label_names, map(float, probs)))}


def _normal(v):
  """Config values compare equal across JSON round trips (tuples become lists)."""
  return json.loads(json.dumps(v))


def _copy_encoder(target, saved):
  """`target` (an nnx.State) with its `encoder` subtree replaced by the saved arrays, placed on
  the target's shardings. A missing or differently shaped array is an error."""

  def copy(path, leaf):
    keys = [getattr(p, "key", getattr(p, "name", None)) for p in path]
    if not keys or keys[0] != "encoder":
      return leaf
    node = saved
    for key in keys:
      found = [k for k in (key, str(key)) if isinstance(node, dict) and k in node]
      if not found:
        raise ConfigError(f"config.init_from: the pretrained checkpoint has no "
                          f"{'/'.join(map(str, keys))}.")
      node = node[found[0]]
    if tuple(node.shape) != tuple(leaf.shape):
      raise ConfigError(f"config.init_from: {'/'.join(map(str, keys))} has shape "
                        f"{tuple(node.shape)} in the checkpoint, {tuple(leaf.shape)} here.")
    return jax.device_put(np.asarray(node, leaf.dtype), leaf.sharding)

  return jax.tree_util.tree_map_with_path(copy, target)
