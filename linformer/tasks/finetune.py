"""Fine-tuning: GLUE, IMDB and ListOps classification (and STS-B regression).

The encoder comes from a pretraining workdir (`config.init_from`: the loop copies its encoder,
`init_subtrees`, and the task takes its tokenizer) or is trained from scratch; the
classification head is new. Metrics are computed on
the host from every example's prediction, with the functions in `linformer.finetune_metrics`.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from linformer import finetune_metrics as metrics_lib
from linformer import flops
from linformer.config import ConfigError, ModelConfig
from linformer.data import classification, encoding, pipeline
from linformer.data import files as files_lib
from linformer.data.datasets import spec_from_config
from linformer.data.listops import listops_tokenizer
from linformer.data.tokenizer import Tokenizer
from linformer.model import SequenceClassifier
from linformer.tasks.base import Task, totals


class FinetuneTask(Task):
  name = "finetune"
  init_subtrees = ("encoder",)

  def __init__(self, config):
    super().__init__(config)
    self.spec = spec_from_config(config.data)
    self.main_metric = self.spec.main_metric

  def setup(
    self, workdir: str, per_host_batch_size: int, init_tokenizer: str | None = None
  ) -> None:
    self.per_host_batch_size = per_host_batch_size
    self.tokenizer = self._tokenizer(workdir, init_tokenizer)
    self._data = None

  @property
  def data(self) -> classification.ClassificationData:
    """Built on first use, so prediction needs no dataset."""
    if self._data is None:
      self._data = classification.build_classification_data(
        self.config.data,
        self.tokenizer,
        pipeline.Batching.of_run(self.config, self.per_host_batch_size),
        spec=self.spec,
      )
    return self._data

  def _tokenizer(self, workdir: str, init_tokenizer: str | None) -> Tokenizer:
    """The run's saved tokenizer, else the pretraining run's, else ListOps's or the configured
    tokenizer.json; saved in the workdir for resume and prediction."""
    saved = os.path.join(workdir, "tokenizer")
    if os.path.isdir(saved) and os.listdir(saved):
      return Tokenizer.load(saved)
    c = self.config
    if init_tokenizer:
      tokenizer = Tokenizer.load(init_tokenizer)
    elif c.data.tokenizer:
      tokenizer = Tokenizer.load(c.data.tokenizer)
    elif self.spec.name == "listops":
      tokenizer = listops_tokenizer()
    else:
      raise ConfigError(
        "Fine-tuning needs a tokenizer: set config.init_from to a pretraining workdir (its "
        "tokenizer and weights are used), or config.data.tokenizer to a tokenizer.json to "
        "train from scratch."
      )
    if jax.process_index() == 0:
      tokenizer.save(saved)
    return tokenizer

  def model_config(self) -> ModelConfig:
    # A pretrained checkpoint fixes the vocabulary (config.model.vocab_size); else the tokenizer.
    return ModelConfig.from_dict(
      {"vocab_size": self.tokenizer.vocab_size, **self.config.model.to_dict()}
    )

  def make_model(self, cfg, rngs):
    return SequenceClassifier(cfg, self.spec.num_labels, rngs=rngs)

  def train_iterator(self):
    return self.data.train_iter

  @functools.cached_property
  def length_buckets(self) -> tuple[int, ...]:
    m = self.config.model
    multiple = m.lsh_chunk_len if m.attention == "lsh" else 1  # LSH sorts whole chunks
    setting = self.config.data.get("length_buckets", "none")
    return encoding.length_buckets(setting, m.max_len, multiple)

  def fit_batch(self, batch):
    """The batch cut to the smallest length bucket that holds its longest example, the same
    on every host (config.data.length_buckets)."""
    width = encoding.bucket_width(batch["attention_mask"], self.length_buckets)
    if jax.process_count() > 1:
      width = int(np.max(multihost_utils.process_allgather(np.int32(width))))
    return encoding.cut_to(batch, width)

  def num_train_examples(self):
    return self.data.num_train_examples

  def train_flops_per_sequence(self, cfg, n=None):
    n = n or cfg.max_len  # a length bucket's batches do the work of n tokens a sequence
    return sum(flops.train_flops(cfg, n, "finetune", num_labels=self.spec.num_labels).values())

  def eval_splits(self):
    return list(self.spec.eval_split_names)

  def eval_batches(self, split):
    return self.data.eval_batches(split)

  def num_eval_batches(self, split):
    return self.data.num_eval_batches(split)

  def _logits(self, model, batch, deterministic, rngs):
    types = batch.get("token_type_ids") if model.cfg.type_vocab_size else None
    return model(
      batch["input_ids"], batch["attention_mask"], types, deterministic=deterministic, rngs=rngs
    )

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
    return {"loss": jnp.sum(per_example * w), "correct": jnp.sum(correct * w), "weight": jnp.sum(w)}

  def eval_outputs(self, model, batch):
    logits = self._logits(model, batch, True, None)
    return {
      **self._sums(logits, batch),
      "logits": logits,
      "labels": batch["labels"],
      "weights": batch["weights"],
    }

  def summarize(self, outputs):
    total = totals(outputs, "loss", "correct", "weight")
    summary = {"loss": total["loss"] / max(total["weight"], 1.0)}
    if not self.spec.is_regression:
      summary["accuracy"] = total["correct"] / max(total["weight"], 1.0)
    return summary

  def eval_summary(self, outputs_by_split):
    result = {}
    for split, outputs in outputs_by_split.items():
      scores = self.metrics_of(outputs)
      scores["loss"] = self.summarize(outputs)["loss"]
      result.update({f"{split}/{name}": value for name, value in scores.items()})
    return result

  def predict(self, model, text: str, text_pair: str | None = None) -> dict:
    """The label (or score) of one input, with its probability."""
    batch = encoding.encode_for_prediction(
      self.spec,
      self.tokenizer,
      text,
      text_pair,
      seq_len=self.config.model.max_len,
      truncation=self.config.data.truncation,
      head_tokens=self.config.data.head_tokens,
      pair_template=self.config.data.pair_template,
      strip_markup=self.config.data.get("strip_markup", False),
    )
    logits = np.asarray(self._logits(model, self.fit_batch(batch), True, None))
    return {"task": self.spec.name, **self.predictions(logits)[0]}

  def predictions(self, logits: np.ndarray) -> list[dict]:
    """One record per row of logits [N, num_labels]: the score (regression), or the label id,
    its name and probability, and every class's probability."""
    if self.spec.is_regression:
      return [{"score": float(row[0])} for row in logits]
    probs = np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), axis=-1))
    names = self.spec.label_names
    return [
      {
        "label": int(np.argmax(p)),
        "label_name": names[int(np.argmax(p))],
        "probability": float(np.max(p)),
        "probabilities": dict(zip(names, map(float, p))),
      }
      for p in probs
    ]

  # Prediction for a file (eval.py --predict_file).

  def read_predict_file(self, path: str) -> files_lib.FileSource:
    """Every example of `path` (a file or glob, any format of `linformer.data.files`) with the
    run's text columns; the label column is optional. Read whole and checked (ConfigError)."""
    field = "--predict_file"
    return files_lib.FileSource(
      files_lib.read_table(path, field),
      self.spec.text_fields,
      self.spec.label_field,
      classification.label_map(self.spec),
      field,
      require_labels=False,
    )

  def predict_batches(self, source: files_lib.FileSource):
    """(this host's batches, batches per host) of one ordered pass over `source`."""
    encoder = classification.make_encoder(
      self.spec, self.tokenizer, self.config.data, seq_len=self.config.model.max_len, split="file"
    )
    batching = pipeline.Batching.of_run(self.config, self.per_host_batch_size)
    batches, num_batches, _ = classification.one_pass_batches(source, encoder, batching)
    return batches, num_batches

  def metrics_of(self, outputs) -> dict[str, float]:
    """The dataset's metrics (`spec.metrics`) from the `eval_outputs` of a split's batches."""
    cat = lambda k: np.concatenate([o[k] for o in outputs])
    predictions = metrics_lib.predictions_from_logits(cat("logits"), self.spec.num_labels)
    return metrics_lib.compute_metrics(
      self.spec.metrics, predictions, cat("labels"), weights=cat("weights")
    )
