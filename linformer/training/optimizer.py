"""AdamW with warmup and decay, RoBERTa's recipe, built from optax.

Weight decay skips biases and LayerNorm parameters (as in BERT/RoBERTa); gradients are clipped
by global norm before the update.
"""

from __future__ import annotations

import jax
import optax

from linformer.config import ConfigError

SCHEDULES = ("linear", "cosine", "constant")


def learning_rate_schedule(opt, num_train_steps: int) -> optax.Schedule:
  """Linear warmup to `opt.lr`, then linear (polynomial power 1), cosine or constant."""
  if opt.schedule not in SCHEDULES:
    raise ConfigError(f"config.optimizer.schedule={opt.schedule!r}: unknown. Use one of "
                      f"{SCHEDULES}.")
  # warmup_fraction (of num_train_steps), when set, takes precedence over warmup_steps.
  fraction = opt.get("warmup_fraction") or 0.0
  warmup = int(round(fraction * num_train_steps)) if fraction else int(opt.warmup_steps)
  if not 0 <= warmup <= num_train_steps:
    raise ConfigError(f"config.optimizer.warmup_steps={warmup}: must be in [0, num_train_steps="
                      f"{num_train_steps}].")
  decay_steps = max(num_train_steps - warmup, 1)
  if opt.schedule == "linear":
    decay = optax.linear_schedule(opt.lr, opt.end_lr, decay_steps)
  elif opt.schedule == "cosine":
    decay = optax.cosine_decay_schedule(opt.lr, decay_steps, alpha=opt.end_lr / opt.lr)
  else:
    decay = optax.constant_schedule(opt.lr)
  warm = optax.linear_schedule(0.0, opt.lr, max(warmup, 1))
  return optax.join_schedules([warm, decay], [warmup])


def _decay_mask(params):
  """True for matrices (kernels, embeddings, projections); false for biases and norms."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt, num_train_steps: int) -> tuple[optax.GradientTransformation,
                                                       optax.Schedule]:
  schedule = learning_rate_schedule(opt, num_train_steps)
  chain = []
  if opt.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  chain.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=_decay_mask))
  return optax.chain(*chain), schedule
