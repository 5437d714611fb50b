"""AdamW with warmup and decay, RoBERTa's recipe, built from optax; phases for uptraining.

Weight decay skips biases and LayerNorm parameters (as in BERT/RoBERTa); gradients are clipped
by global norm before the update.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
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


class PhasedState(NamedTuple):
  count: jax.Array
  inner: tuple


def phased(transforms, starts) -> optax.GradientTransformation:
  """`transforms[i]` updates from step `starts[i]` (`starts[0]` = 0) to the next start, each
  with a state of its own that starts with its phase: a weight's AdamW step count and moments
  begin when it begins training, as a fresh optimizer's would."""
  transforms, bounds = tuple(transforms), jnp.asarray(starts[1:], jnp.int32)

  def init(params):
    return PhasedState(jnp.zeros([], jnp.int32), tuple(t.init(params) for t in transforms))

  def update(updates, state, params=None):
    def branch(i):
      def run(_):
        new, inner = transforms[i].update(updates, state.inner[i], params)
        return new, state.inner[:i] + (inner,) + state.inner[i + 1 :]

      return run

    index = jnp.sum(state.count >= bounds)
    new, inner = jax.lax.switch(index, [branch(i) for i in range(len(transforms))], None)
    return new, PhasedState(optax.safe_increment(state.count), inner)

  return optax.GradientTransformation(init, update)


# The label of each parameter group of an uptraining run, by what it came from.
PRETRAINED, NEW, PROJECTION = "pretrained", "new", "projection"


def make_optimizer(
  opt,
  num_train_steps: int,
  *,
  labels=None,
  freeze_steps: int = 0,
  freeze_lr: float | None = None,
  transfer_steps: int = 0,
  transfer_lr: float | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer and the schedule to log.

  A warm-started run may have three phases; `labels` (a tree like the parameters) names each
  parameter's group: PRETRAINED (imported), NEW (a fresh MLM head) or PROJECTION (E and F).
  1. `transfer_steps`: only PROJECTION trains (attention transfer), Adam at `transfer_lr`;
  2. `freeze_steps`: NEW and PROJECTION train at a constant `freeze_lr` (default `opt.lr`): a
     fresh head or projection needs a rate the pretrained weights would not stand;
  3. everything follows the schedule, its warmup starting where phase 2 ends.
  Each group's AdamW starts afresh when it starts training in phase 2 or 3.
  """
  adamw = lambda schedule, decay=opt.weight_decay: optax.adamw(
    schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=decay, mask=_decay_mask
  )
  clip = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm else []
  if labels is None or not (freeze_steps or transfer_steps):
    schedule = learning_rate_schedule(opt, num_train_steps)
    return optax.chain(*clip, adamw(schedule)), schedule
  start = transfer_steps + freeze_steps  # of phase 3
  if not 0 < start <= num_train_steps:
    raise ConfigError(
      f"config.transfer_steps={transfer_steps} plus config.freeze_pretrained_steps="
      f"{freeze_steps} must be in [1, num_train_steps={num_train_steps}]."
    )
  for field, rate in (("freeze_lr", freeze_lr), ("transfer_lr", transfer_lr)):
    if rate is not None and not rate > 0:
      raise ConfigError(f"config.{field}={rate}: must be > 0 (or None for optimizer.lr).")
  after = (  # none when the imported weights never train (fitting an MLM head)
    learning_rate_schedule(opt, num_train_steps - start)
    if num_train_steps > start
    else optax.constant_schedule(0.0)
  )
  rate = opt.lr if freeze_lr is None else freeze_lr
  new = optax.join_schedules([optax.constant_schedule(rate), after], [freeze_steps])
  zero = optax.set_to_zero()
  transfer = optax.adam(
    opt.lr if transfer_lr is None else transfer_lr, b1=opt.b1, b2=opt.b2, eps=opt.eps
  )
  groups = {
    PRETRAINED: phased([zero, adamw(after)], [0, start]),
    NEW: phased([zero, adamw(new)], [0, transfer_steps]),
    PROJECTION: phased([transfer, adamw(new)], [0, transfer_steps]),
  }
  tx = optax.multi_transform(groups, labels)
  shown = optax.join_schedules(
    [optax.constant_schedule(transfer_lr or opt.lr), new], [transfer_steps]
  )
  return optax.chain(*clip, tx), shown
