"""Masked-LM pretraining (RoBERTa): FULL-SENTENCES blocks, dynamic masking, tied MLM head."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax

from linformer.config import ModelConfig
from linformer.model import MaskedLM
from linformer.tasks.base import Task


def mlm_sums(logits, targets, weights):
  """Summed cross-entropy, correct predictions and prediction count at the masked positions."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return {"loss": jnp.sum(ce * weights), "correct": jnp.sum(correct * weights),
          "weight": jnp.sum(weights)}


def mlm_summary(loss_sum: float, correct: float, weight: float) -> dict[str, float]:
  loss = loss_sum / max(weight, 1.0)
  return {"loss": loss, "accuracy": correct / max(weight, 1.0),
          "perplexity": math.exp(min(loss, 50.0))}


class MaskedLMTask(Task):
  name = "mlm"

  def setup(self, workdir: str, per_host_batch_size: int) -> None:
    from linformer.data import pretrain

    c = self.config
    self.data = pretrain.build_pretrain_data(
        c.data, workdir, seq_len=c.model.max_len, per_host_batch_size=per_host_batch_size,
        seed=c.seed)
    self.tokenizer = self.data.tokenizer

  def model_config(self) -> ModelConfig:
    return ModelConfig.from_dict({**self.config.model.to_dict(),
                                  "vocab_size": self.tokenizer.vocab_size})

  def make_model(self, cfg, rngs):
    return MaskedLM(cfg, rngs=rngs)

  def train_iterator(self):
    return self.data.train_iter

  def eval_batches(self, split):
    return self.data.eval_dataset_fn()

  def loss(self, model, batch, *, deterministic, rngs):
    logits = model(batch["input_ids"], batch["attention_mask"], batch["mlm_positions"],
                   deterministic=deterministic, rngs=rngs)
    return mlm_sums(logits, batch["mlm_targets"], batch["mlm_weights"])

  def summarize(self, outputs):
    total = {k: float(np.sum([o[k] for o in outputs])) for k in ("loss", "correct", "weight")}
    return mlm_summary(total["loss"], total["correct"], total["weight"])

  def eval_summary(self, outputs_by_split):
    """Validation metrics, with the unigram model's perplexity on the same tokens beside."""
    return {**self.summarize(outputs_by_split["validation"]),
            "unigram_perplexity": self.data.eval_dataset_fn.unigram_perplexity}
