"""Reformer's LSH self-attention (Kitaev et al. 2020, section 2), the third attention kind of
`attention.SelfAttention` (`cfg.attention='lsh'`): angular hashing of the shared query-key
vectors in rounds, attention within sorted chunks, the rounds combined by their log-sum-exp."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from linformer.config import ModelConfig

# LSH attention (Reformer). A token whose only visible key is itself attends to itself with this
# score (Reformer's 1e5 below any real score): used only when nothing else is in reach.
LSH_SELF_SCORE = -1e5


def lsh_rotations(cfg: ModelConfig, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
  """The random rotations R (rounds, head_dim, buckets / 2), shared by the batch and the heads:
  drawn from the dropout stream in training (new ones at every call; under a layer scan the
  stream is in the carry, so every layer draws its own), fixed by `cfg.lsh_seed` in evaluation
  (the same for every layer: each layer's own query-key projection makes its buckets its own,
  and a scanned and an unrolled model hash alike)."""
  shape = (cfg.lsh_rounds, cfg.head_dim, cfg.lsh_num_buckets // 2)
  if deterministic:
    key = jax.random.key(cfg.lsh_seed)
  elif rngs is None:
    raise ValueError(
      "LSH attention in training (deterministic=False) draws its hash rotations from the dropout "
      "stream: pass rngs=nnx.Rngs(dropout=key)."
    )
  else:
    key = rngs.dropout()
  return jax.random.normal(key, shape, jnp.float32)


def lsh_hash(qk: jax.Array, rotations: jax.Array) -> jax.Array:
  """Angular LSH: the bucket argmax([x R; -x R]) of every token x of qk (b, n, h, d) in every
  round, (b, h, rounds, n) int32 in [0, 2 * rotations.shape[-1])."""
  rotated = jnp.einsum("bnhd,rdk->bhrnk", qk, rotations.astype(qk.dtype),
                       preferred_element_type=jnp.float32)  # fmt: skip
  return jnp.argmax(jnp.concatenate([rotated, -rotated], axis=-1), axis=-1).astype(jnp.int32)


def lsh_attend(qk, v, key_mask, buckets, chunk_len, dropout, deterministic, rngs):
  """Reformer's LSH attention of qk, v (b, n, h, d) with n a multiple of chunk_len; key_mask
  (b, n) real tokens; buckets (b, h, rounds, n) from `lsh_hash`. Returns (b, n, h, d).

  Per round, the tokens are sorted by (bucket, position) and cut into chunks of chunk_len; a
  query sees the keys of its own bucket in its chunk and the chunk before (not across the start
  of the round), never a padded key, and itself only at LSH_SELF_SCORE (so only when alone).
  Keys are the unit-length queries, scores q . k / sqrt(d). The rounds are combined by their
  log-sum-exp: out = sum_r softmax_r(lse_r) o_r, the softmax over the union of the rounds' keys
  with a key seen in several rounds counted that many times (Reformer's count correction of
  duplicates is not applied).

  Exact padding: padded tokens are sorted into an extra bucket after every real one, whatever
  their hash, so the real tokens' sorted order, their chunks and the keys they see are those of
  the same tokens without the padding: outputs on real tokens do not depend on it, for any
  lengths (up to float rounding of the inputs, which could move a token across a hash boundary
  only on an exact tie).
  """
  b, n, h, d = qk.shape
  rounds, c = buckets.shape[2], chunk_len
  chunks = n // c
  f32 = jnp.float32
  # Padding in an extra bucket, last; within a bucket by position (a stable sort).
  padded = jnp.iinfo(jnp.int32).max
  buckets = jnp.where(key_mask[:, None, None, :], buckets, padded)
  order = jnp.argsort(buckets, axis=-1, stable=True)  # (b, h, rounds, n): positions, sorted
  undo = jnp.argsort(order, axis=-1)

  def by_chunk(a):
    """a (b, h, n, ...) in round-sorted order, as (b, h, rounds, chunks, c, ...)."""
    index = order.reshape(order.shape + (1,) * (a.ndim - 3))
    sorted_a = jnp.take_along_axis(a[:, :, None], index, axis=3)
    return sorted_a.reshape(b, h, rounds, chunks, c, *a.shape[3:])

  def with_previous(a):
    """Each chunk's keys: its own c, then the c of the chunk before (chunk 0: masked below)."""
    return jnp.concatenate([a, jnp.roll(a, 1, axis=3)], axis=4)

  heads_first = lambda a: jnp.swapaxes(a, 1, 2)  # (b, n, h, ...) -> (b, h, n, ...)
  sq = by_chunk(heads_first(qk))
  norm = jax.lax.rsqrt(jnp.sum(jnp.square(qk.astype(f32)), axis=-1, keepdims=True) + 1e-6)
  sk = with_previous(by_chunk(heads_first((qk * norm).astype(qk.dtype))))
  sv = with_previous(by_chunk(heads_first(v)))
  positions = by_chunk(jnp.broadcast_to(jnp.arange(n), (b, h, n)))
  sb = jnp.take_along_axis(buckets, order, axis=-1).reshape(b, h, rounds, chunks, c)
  real = sb != padded  # the padding's bucket, set above: no second gather of the mask

  scale = 1.0 / jnp.sqrt(d).astype(f32)
  logits = jnp.einsum("bhrcqd,bhrckd->bhrcqk", sq, sk, preferred_element_type=f32) * scale
  previous_ok = jnp.arange(chunks)[:, None] > 0  # (chunks, 1): chunk 0 has no chunk before
  in_reach = jnp.concatenate(
    [jnp.ones((chunks, c), bool), jnp.broadcast_to(previous_ok, (chunks, c))], axis=-1
  )
  visible = (
    (sb[..., :, None] == with_previous(sb)[..., None, :])
    & with_previous(real)[..., None, :]
    & in_reach[:, None, :]
  )
  logits = jnp.where(visible, logits, jnp.finfo(f32).min)
  # In reach only: with one chunk, the chunk before is the chunk itself, masked above.
  itself = (positions[..., :, None] == with_previous(positions)[..., None, :]) & in_reach[:, None]
  logits = jnp.where(itself, LSH_SELF_SCORE, logits)
  lse = jax.nn.logsumexp(logits, axis=-1)  # (b, h, rounds, chunks, c)
  weights = jnp.exp(logits - lse[..., None])
  if not deterministic and dropout.rate > 0.0:
    weights = dropout(weights, deterministic=False, rngs=rngs)
  out = jnp.einsum("bhrcqk,bhrckd->bhrcqd", weights.astype(v.dtype), sv)

  # Back to positions, then the rounds combined by their share of the total softmax mass.
  unsort = lambda a: jnp.take_along_axis(
    a.reshape(b, h, rounds, n, *a.shape[5:]), undo.reshape(undo.shape + (1,) * (a.ndim - 5)), axis=3
  )
  out, lse = unsort(out), unsort(lse)
  share = jax.nn.softmax(lse, axis=2)
  out = jnp.einsum("bhrn,bhrnd->bnhd", share.astype(out.dtype), out)
  return out
