"""Masked-LM pretraining (RoBERTa): FULL-SENTENCES blocks, dynamic masking, tied MLM head."""

from __future__ import annotations

import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from linformer import flops
from linformer.config import ModelConfig
from linformer.data import pipeline, pretrain
from linformer.data.mlm import default_max_predictions
from linformer.data.tokenizer import Tokenizer
from linformer.model import MaskedLM
from linformer.tasks import distill
from linformer.tasks.base import Task, totals


def mlm_sums(logits, targets, weights):
  """Summed cross-entropy, correct predictions and prediction count at the masked positions."""
  with jax.named_scope("loss"):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    # Correct when the target's logit is the largest: the max is the softmax's own reduction,
    # where an argmax over the vocabulary is a second, slower one (a tie, which float logits
    # all but never have, counts as correct).
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    correct = (target_logit >= jnp.max(logits, axis=-1)).astype(jnp.float32)
  return {
    "loss": jnp.sum(ce * weights),
    "correct": jnp.sum(correct * weights),
    "weight": jnp.sum(weights),
  }


def mlm_summary(loss_sum: float, correct: float, weight: float) -> dict[str, float]:
  loss = loss_sum / max(weight, 1.0)
  return {
    "loss": loss,
    "accuracy": correct / max(weight, 1.0),
    "perplexity": math.exp(min(loss, 50.0)),
  }


class MaskedLMTask(Task):
  name = "mlm"
  objective = "mlm"  # the examples `build_pretrain_data` makes of the packed blocks

  def setup(
    self, workdir: str, per_host_batch_size: int, init_tokenizer: str | None = None
  ) -> None:
    c = self.config
    saved = os.path.join(workdir, "tokenizer")
    given = None
    if init_tokenizer and not (os.path.isdir(saved) and os.listdir(saved)):
      given = Tokenizer.load(init_tokenizer)  # continued pretraining keeps the source's ids
    self.data = pretrain.build_pretrain_data(
      c.data,
      workdir,
      pipeline.Batching.of_run(c, per_host_batch_size),
      tokenizer=given,
      objective=self.objective,
    )
    self.tokenizer = self.data.tokenizer

  def model_config(self) -> ModelConfig:
    # A pretrained checkpoint fixes the vocabulary (config.model.vocab_size); else the tokenizer.
    return ModelConfig.from_dict(
      {"vocab_size": self.tokenizer.vocab_size, **self.config.model.to_dict()}
    )

  def make_model(self, cfg, rngs):
    return MaskedLM(cfg, rngs=rngs)

  def train_iterator(self):
    return self.data.train_iter

  def train_flops_per_sequence(self, cfg, n=None):
    d, n = self.config.data, n or cfg.max_len
    m = d.max_predictions or default_max_predictions(n, d.mask_prob)
    return sum(flops.train_flops(cfg, n, "mlm", m).values())

  def eval_splits(self):
    return ["validation"]

  def eval_batches(self, split):
    if split not in self.data.eval_splits:
      raise KeyError(split)
    return self.data.eval_splits[split]()

  def loss(self, model, batch, *, deterministic, rngs):
    logits = model(
      batch["input_ids"],
      batch["attention_mask"],
      batch["mlm_positions"],
      deterministic=deterministic,
      rngs=rngs,
    )
    return mlm_sums(logits, batch["mlm_targets"], batch["mlm_weights"])

  def transfer_loss(self, model, teacher, batch):
    return distill.transfer_sums(model, teacher, batch)

  def distill_loss(self, model, teacher, batch, *, deterministic, rngs):
    """MLM sums with `alpha` KL + `beta` hidden-state error (tasks/distill.py) in `loss`."""
    d = self.config.distill
    logits, hidden = model.logits_and_hidden(
      batch["input_ids"],
      batch["attention_mask"],
      batch["mlm_positions"],
      deterministic=deterministic,
      rngs=rngs,
    )
    sums = mlm_sums(logits, batch["mlm_targets"], batch["mlm_weights"])
    terms = distill.distill_terms(
      logits,
      hidden,
      teacher,
      batch,
      temperature=d.temperature,
      mask_prob=self.config.data.mask_prob,
    )
    loss = sums["loss"] + d.alpha * terms["kl"] + d.beta * terms["hidden"]
    return {**sums, **terms, "mlm_loss": sums["loss"], "loss": loss}

  def teacher_eval_outputs(self, model, teacher, batch):
    return distill.attention_error_sums(model, teacher, batch)

  def summarize(self, outputs):
    """MLM metrics (the MLM part alone when distilling: `objective` is the whole loss), and
    the attention-output error against a teacher when the outputs have it."""
    result = {}
    if "correct" in outputs[0]:
      mlm_loss = "mlm_loss" if "mlm_loss" in outputs[0] else "loss"
      t = totals(outputs, mlm_loss, "correct", "weight")
      result.update(mlm_summary(t[mlm_loss], t["correct"], t["weight"]))
      if "kl" in outputs[0]:
        weight = max(t["weight"], 1.0)
        t = totals(outputs, "loss", "kl", "hidden")
        result.update({"objective" if k == "loss" else k: v / weight for k, v in t.items()})
    if "attention_error" in outputs[0]:
      positions = totals(outputs, "positions")["positions"]
      errors = np.sum([o["attention_error"] for o in outputs], 0) / max(positions, 1.0)
      result["attention_error"] = float(np.mean(errors))
      result.update({f"attention_error/layer{i}": float(e) for i, e in enumerate(errors)})
      result.setdefault("loss", result["attention_error"])  # an attention-transfer step
    return result

  def eval_summary(self, outputs_by_split):
    """Metrics with the unigram model's perplexity on the same tokens beside: unprefixed for
    validation (the run's eval), '{split}/{metric}' for any other split."""
    result = {}
    for split, outputs in outputs_by_split.items():
      metrics = {
        **self.summarize(outputs),
        "unigram_perplexity": self.data.eval_splits[split].unigram_perplexity,
      }
      prefix = "" if split == "validation" else f"{split}/"
      result.update({prefix + k: v for k, v in metrics.items()})
    return result

  def fill_mask(self, model, text: str, top_k: int = 5) -> dict:
    """The `top_k` most likely tokens at each mask of `text`, written `<mask>` or as the
    tokenizer's own mask token (`[MASK]` for BERT)."""
    tok = self.tokenizer
    spellings = sorted({"<mask>", tok.id_to_token(tok.mask_id)}, key=len, reverse=True)
    pieces = re.split("|".join(map(re.escape, spellings)), text)
    if len(pieces) == 1:
      raise ValueError(
        f"--fill_mask: the text has no mask; write {' or '.join(spellings)} "
        "where a token should be predicted."
      )
    ids = [tok.bos_id]
    for i, piece in enumerate(pieces):
      if i:
        ids.append(tok.mask_id)
      ids.extend(tok.encode(piece) if piece.strip() else [])
    ids.append(tok.eos_id)
    n = self.config.model.max_len
    if len(ids) > n:
      raise ValueError(
        f"--fill_mask: the text is {len(ids)} tokens with [CLS]/[SEP]; the model "
        f"takes at most config.model.max_len={n}. Shorten it."
      )
    positions = [i for i, t in enumerate(ids) if t == tok.mask_id]
    input_ids = np.full((1, n), tok.pad_id, np.int32)
    input_ids[0, : len(ids)] = ids
    logits = model(
      jnp.asarray(input_ids),
      jnp.asarray(input_ids != tok.pad_id),
      jnp.asarray([positions], jnp.int32),
    )
    probs = np.asarray(jax.nn.softmax(logits[0], axis=-1))
    masks = []
    for position, p in zip(positions, probs):
      best = np.argsort(-p)[:top_k]
      masks.append(
        {
          "position": position,
          "candidates": [
            {"token": tok.id_to_token(i), "id": int(i), "probability": float(p[i])} for i in best
          ],
        }
      )
    return {"text": text, "masks": masks}
