"""A frozen full-attention teacher for a converted Linformer: attention transfer and distillation.

The teacher is the imported checkpoint run with `attention='full'` (the trainer keeps its
parameters beside the student's and never trains them). Two signals come from it:

- **Attention transfer** (LoLCATs, Zhang et al. 2024, for linear attention): every layer of the
  student gets the teacher's own input to that layer and its attention output is fitted to the
  teacher's, all layers at once from one teacher pass. The error of a layer is the mean over real
  (non-padding) positions of ||student - teacher||^2 / ||teacher||^2.
- **Distillation** during continued MLM (CALD, He & Garner 2025): the MLM loss plus `alpha` times
  the KL divergence from the teacher's distribution at the masked positions (temperature T,
  scaled by T^2 as in Hinton et al.) plus `beta` times the mean relative error of every layer's
  hidden states.

Losses are sums with a `weight`, as every task's (tasks/base.py), so micro-batches add exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_TINY = 1e-12  # a zero teacher vector (never seen in practice) must not divide by zero


def _relative_errors(student, teacher, real):
  """Per-position ||s - t||^2 / ||t||^2, summed over real positions: a float32 scalar."""
  s, t = student.astype(jnp.float32), jax.lax.stop_gradient(teacher).astype(jnp.float32)
  error = jnp.sum((s - t) ** 2, -1) / jnp.maximum(jnp.sum(t**2, -1), _TINY)
  return jnp.sum(error * real)


def attention_error_sums(student, teacher, batch) -> dict[str, jax.Array]:
  """Each layer's summed attention-output error (`attention_error`, (layers,)) over `positions`
  real positions, the student fed the teacher's layer inputs."""
  mask = batch["attention_mask"]
  inputs, targets = teacher.encoder.attention_inputs_and_outputs(batch["input_ids"], mask)
  inputs = [jax.lax.stop_gradient(x) for x in inputs]
  outputs = student.encoder.attention_outputs(inputs, mask)
  real = mask.astype(jnp.float32)
  errors = jnp.stack([_relative_errors(s, t, real) for s, t in zip(outputs, targets)])
  return {"attention_error": errors, "positions": jnp.sum(real)}


def transfer_sums(student, teacher, batch) -> dict[str, jax.Array]:
  """The attention-transfer loss: the mean over layers of each layer's error."""
  sums = attention_error_sums(student, teacher, batch)
  return {"loss": jnp.mean(sums["attention_error"]), "weight": sums["positions"], **sums}


def kl_sum(student_logits, teacher_logits, weights, temperature: float):
  """T^2 * KL(teacher || student) at temperature T, summed over the weighted positions."""
  t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits) / temperature, -1)
  s = jax.nn.log_softmax(student_logits / temperature, -1)
  kl = jnp.sum(jnp.exp(t) * (t - s), -1)
  return temperature**2 * jnp.sum(kl * weights)


def distill_terms(
  logits, hidden, teacher, batch, *, temperature: float, mask_prob: float
) -> dict[str, jax.Array]:
  """The distillation sums of a student's MLM `logits` and per-layer `hidden` states: `kl` at
  the masked positions and `hidden`, every layer's relative error summed over real positions,
  averaged over layers and scaled by `mask_prob`, so that after the division by the number of
  predictions it weighs as a mean over positions."""
  teacher_logits, teacher_hidden = teacher.logits_and_hidden(
    batch["input_ids"], batch["attention_mask"], batch["mlm_positions"]
  )
  real = batch["attention_mask"].astype(jnp.float32)
  per_layer = [_relative_errors(s, t, real) for s, t in zip(hidden, teacher_hidden)]
  return {
    "kl": kl_sum(logits, teacher_logits, batch["mlm_weights"], temperature),
    "hidden": mask_prob * jnp.mean(jnp.stack(per_layer)),
  }
