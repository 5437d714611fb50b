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
    raise ConfigError(
      f"config.optimizer.schedule={opt.schedule!r}: unknown. Use one of {SCHEDULES}."
    )
  # warmup_fraction (of num_train_steps), when set, takes precedence over warmup_steps.
  fraction = opt.get("warmup_fraction") or 0.0
  warmup = int(round(fraction * num_train_steps)) if fraction else int(opt.warmup_steps)
  if not 0 <= warmup <= num_train_steps:
    raise ConfigError(
      f"config.optimizer.warmup_steps={warmup}: must be in [0, num_train_steps={num_train_steps}]."
    )
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


def make_optimizer(
  opt,
  num_train_steps: int,
  *,
  frozen_mask=None,
  freeze_steps: int = 0,
  freeze_lr: float | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer and the schedule to log.

  With a freeze phase (uptraining: `frozen_mask` True for the imported weights) the first
  `freeze_steps` train only the new weights, at a constant `freeze_lr` (default `opt.lr`): a
  fresh MLM head or Linformer projection needs a rate the pretrained weights would not stand.
  Then every weight follows the schedule, its warmup starting when the freeze ends.
  """
  adamw = lambda schedule: optax.adamw(
    schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=_decay_mask
  )
  clip = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm else []
  if frozen_mask is None or not freeze_steps:
    schedule = learning_rate_schedule(opt, num_train_steps)
    return optax.chain(*clip, adamw(schedule)), schedule
  if not 0 < freeze_steps < num_train_steps:
    raise ConfigError(
      f"config.freeze_pretrained_steps={freeze_steps}: must be below num_train_steps="
      f"{num_train_steps}, so that the imported weights train too."
    )
  after = learning_rate_schedule(opt, num_train_steps - freeze_steps)
  rate = opt.lr if freeze_lr is None else freeze_lr
  if not rate > 0:
    raise ConfigError(f"config.freeze_lr={freeze_lr}: must be > 0 (or None for optimizer.lr).")
  pretrained = optax.join_schedules([optax.constant_schedule(0.0), after], [freeze_steps])
  new = optax.join_schedules([optax.constant_schedule(rate), after], [freeze_steps])
  labels = jax.tree.map(lambda frozen: "pretrained" if frozen else "new", frozen_mask)
  tx = optax.multi_transform({"pretrained": adamw(pretrained), "new": adamw(new)}, labels)
  return optax.chain(*clip, tx), new
