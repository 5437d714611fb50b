"""Linformer and full multi-head self-attention, with exact padding.

Linformer (Wang et al. 2020, eq. 7) projects the per-head keys and values along the sequence
axis, n -> k, with matrices E and F, so attention costs O(nk):

    head_i = softmax(Q_i (E_i K_i)^T / sqrt(d)) (F_i V_i),   K_i = X W_i^K, V_i = X W_i^V.

Exact padding. Padded positions have their keys and values set to zero *before* the sequence
projection, so they add nothing to E K or F V, and an input of length n' uses only the first n'
columns of E and F. A sequence of L real tokens padded to any n' therefore attends to exactly the
same k projected keys and values as the same sequence given at length L. The published
implementations (fairseq, the LRA Flax code, lucidrains) skip this and let padding leak in.

Pooling and convolution projections (the paper's "further techniques") cut the sequence into
windows of r = n/k positions. A window's output is computed from its real tokens only (masked
mean, masked max, or the convolution with zeros at padding), and windows holding no real token are
masked out of the softmax. A length-L input has ceil(L/r) windows; padded to n' it has
ceil(n'/r), of which the extra ones are empty and masked, so again the outputs on the real tokens
do not depend on the padding.

Sharing (paper section 4): `none` gives every head its own E_i and F_i; `headwise` one E and one
F per layer; `kv` one matrix per layer used as both E and F; `layerwise` one matrix for the whole
model. Sharing is expressed by object identity: a shared `SeqProjection` is the same NNX module
referenced from several places, so the parameter tree holds it once.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from linformer import axes
from linformer.config import ModelConfig


class FixedProjection(nnx.Variable):
  """A projection matrix that is state but not a parameter: never trained, never decayed."""


def partitioned(init, *names):
  """An initializer whose parameter carries logical axis names for sharding (see training/)."""
  return nnx.with_partitioning(init, names, eager_sharding=False)


def _param(rngs, init, shape, names, variable=nnx.Param):
  return variable(init(rngs.params(), shape, jnp.float32), out_sharding=names, eager_sharding=False)


def pooling_init(key, shape, dtype=jnp.float32):
  """(..., k, n) matrices whose row i is the mean over positions j with floor(j k / n) = i."""
  del key
  k, n = shape[-2:]
  window = (jnp.arange(n) * k) // n
  matrix = (window[None, :] == jnp.arange(k)[:, None]).astype(dtype)
  matrix = matrix / matrix.sum(axis=1, keepdims=True)
  return jnp.broadcast_to(matrix, shape).astype(dtype)


class SeqProjection(nnx.Module):
  """Projects (batch, n', heads, head_dim) to (batch, k', heads, head_dim) along the sequence.

  `heads` is the number of heads with their own matrix (sharing `none`), or None for one matrix
  shared by all heads.

  Initialisation. `learned` E is N(0, 1/n): each projected key or value then has the scale of a
  single token's key or value, so the initial logits and outputs match full attention's (fairseq's
  Xavier init with gain 1/sqrt(2) gives a similar 1/(n+k)). With `init='pool'` a learned E starts
  as mean pooling instead (row i averages the positions j with floor(j k / n) = i): a model
  converted from full attention then starts with attention over window means, close to where it
  was, which is what uptraining wants (see configs/uptrain.py). `random` is the
  Johnson-Lindenstrauss matrix of the paper's Theorem 1, N(0, 1/k), fixed. `conv` starts as mean
  pooling (every tap 1/r) and is trained.
  """

  def __init__(
    self, kind: str, n: int, k: int, heads: int | None, *, rngs: nnx.Rngs, init: str = "normal"
  ):
    self.kind, self.n, self.k = kind, n, k
    self.window = n // k
    lead = () if heads is None else (heads,)
    lead_names = () if heads is None else (axes.HEADS,)
    if kind == "learned":
      start = pooling_init if init == "pool" else nnx.initializers.normal(1.0 / math.sqrt(n))
      self.matrix = _param(rngs, start, lead + (k, n), lead_names + (axes.SEQ_PROJ, axes.SEQ))
    elif kind == "random":
      self.matrix = _param(
        rngs,
        nnx.initializers.normal(1.0 / math.sqrt(k)),
        lead + (k, n),
        lead_names + (axes.SEQ_PROJ, axes.SEQ),
        variable=FixedProjection,
      )
    elif kind == "conv":
      self.kernel = _param(
        rngs,
        nnx.initializers.constant(1.0 / self.window),
        lead + (self.window,),
        lead_names + (axes.CONV_TAP,),
      )

  @property
  def per_head(self) -> bool:
    return (self.kind in ("learned", "random") and self.matrix.ndim == 3) or (
      self.kind == "conv" and self.kernel.ndim == 2
    )

  @property
  def linear(self) -> bool:
    """Whether projecting commutes with the K/V projections (all kinds but max pooling)."""
    return self.kind != "max_pool"

  def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """x: (b, n', h, d), or (b, n', c) for a projection shared by all heads, with padding
    already zeroed; mask: (b, n') bool.

    Returns the projected x and a (b, k') mask of valid projected positions, or None when every
    projected position is valid (matrix projections mix all real tokens into every row).
    """
    n_in = x.shape[1]
    if self.kind in ("learned", "random"):
      matrix = self.matrix[...][..., :n_in].astype(x.dtype)
      if self.kind == "random":
        matrix = jax.lax.stop_gradient(matrix)
      spec = "kn,bn...->bk..." if matrix.ndim == 2 else "hkn,bnhd->bkhd"
      return jnp.einsum(spec, matrix, x), None

    # Window projections: pad to a whole number of windows, then reduce each window.
    r = self.window
    num_windows = -(-n_in // r)
    extra = num_windows * r - n_in
    x = jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))
    mask = jnp.pad(mask, ((0, 0), (0, extra)))
    b, features = x.shape[0], x.shape[2:]
    x = x.reshape(b, num_windows, r, *features)
    m = mask.reshape(b, num_windows, r)
    valid = m.any(axis=-1)
    expand = lambda a: a.reshape(a.shape + (1,) * len(features))
    if self.kind == "mean_pool":
      count = jnp.maximum(m.sum(axis=-1), 1).astype(x.dtype)
      out = x.sum(axis=2) / expand(count)
    elif self.kind == "max_pool":
      neg = jnp.finfo(x.dtype).min
      out = jnp.where(expand(m), x, neg).max(axis=2)
      out = jnp.where(expand(valid), out, 0)
    else:  # conv: kernel size and stride r, one kernel per matrix, shared across channels.
      kernel = self.kernel[...].astype(x.dtype)
      spec = "bwr...,r->bw..." if kernel.ndim == 1 else "bwrhd,hr->bwhd"
      out = jnp.einsum(spec, x, kernel)
    return out, valid


def attend(
  q,
  k,
  v,
  key_mask,
  dropout: nnx.Dropout,
  deterministic: bool,
  rngs,
  implementation: str | None = None,
):
  """Softmax attention of q (b, n, h, d) over k, v (b, s, h, d); key_mask (b, s) or None.

  Without attention dropout this is `jax.nn.dot_product_attention` with the given
  implementation (`cudnn`: flash attention on NVIDIA GPUs, which takes the mask as the number of
  valid keys: exact because padding and empty pooling windows are always at the end). Its API has
  no dropout, so training with attention dropout takes the explicit path below, which computes
  the same logits and softmax in float32.
  """
  mask = None if key_mask is None else key_mask[:, None, None, :]
  if deterministic or dropout.rate == 0.0:
    if implementation == "cudnn":
      lengths = None if key_mask is None else key_mask.sum(-1, dtype=jnp.int32)
      return jax.nn.dot_product_attention(
        q, k, v, key_value_seq_lengths=lengths, implementation="cudnn"
      )
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits / jnp.sqrt(q.shape[-1]).astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  weights = dropout(weights, deterministic=False, rngs=rngs).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def make_projections(
  cfg: ModelConfig, layer: int, shared: SeqProjection | None, rngs: nnx.Rngs
) -> tuple[SeqProjection, SeqProjection]:
  """The (E, F) pair of one layer under the configured sharing mode."""
  if cfg.sharing == "layerwise":
    assert shared is not None, "layerwise sharing needs the model-wide projection"
    return shared, shared
  k = cfg.layer_ks[layer]
  heads = cfg.num_heads if cfg.sharing == "none" else None
  e = SeqProjection(cfg.projection, cfg.max_len, k, heads, rngs=rngs, init=cfg.projection_init)
  if cfg.sharing == "kv":
    return e, e
  return e, SeqProjection(
    cfg.projection, cfg.max_len, k, heads, rngs=rngs, init=cfg.projection_init
  )


class SelfAttention(nnx.Module):
  """Multi-head self-attention, Linformer or full, selected by `cfg.attention`."""

  def __init__(self, cfg: ModelConfig, layer: int, shared: SeqProjection | None, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = jnp.dtype(cfg.dtype)
    h, d = cfg.num_heads, cfg.head_dim

    def qkv():
      return nnx.LinearGeneral(
        cfg.hidden_size,
        (h, d),
        dtype=dtype,
        rngs=rngs,
        kernel_init=partitioned(nnx.initializers.lecun_normal(), axes.EMBED, axes.HEADS, axes.KV),
        bias_init=partitioned(nnx.initializers.zeros_init(), axes.HEADS, axes.KV),
      )

    self.query, self.key, self.value = qkv(), qkv(), qkv()
    self.out = nnx.LinearGeneral(
      (h, d),
      cfg.hidden_size,
      axis=(-2, -1),
      dtype=dtype,
      rngs=rngs,
      kernel_init=partitioned(nnx.initializers.lecun_normal(), axes.HEADS, axes.KV, axes.EMBED),
      bias_init=partitioned(nnx.initializers.zeros_init(), axes.EMBED),
    )
    self.dropout = nnx.Dropout(cfg.attention_dropout_rate)
    if cfg.attention == "linformer":
      self.proj_k, self.proj_v = make_projections(cfg, layer, shared, rngs)

  def __call__(
    self, x: jax.Array, mask: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    """x: (batch, n', hidden); mask: (batch, n'), true at real tokens."""
    mask = mask.astype(bool)
    q = self.query(x)
    if self.cfg.attention == "full":
      k, v, key_mask = self.key(x), self.value(x), mask
    elif self.proj_k.per_head or not (self.proj_k.linear and self.proj_v.linear):
      real = mask[:, :, None, None]
      k, key_mask = self.proj_k(jnp.where(real, self.key(x), 0), mask)
      v, _ = self.proj_v(jnp.where(real, self.value(x), 0), mask)
    else:
      k, v, key_mask = self._project_inputs_first(x, mask)
    out = attend(q, k, v, key_mask, self.dropout, deterministic, rngs, self.cfg.attention_impl)
    return self.out(out)

  def _project_inputs_first(self, x, mask):
    """E (X W + b) computed as (E X) W + (E 1) b: the same keys and values, but the K and V
    matrices multiply k rows instead of n (about 1.6x faster at n=4096, k=128). Valid for
    projections shared by all heads and linear in their input; masked rows are zeroed first, so
    padding stays exact."""
    x = jnp.where(mask[:, :, None], x, 0)
    ones = mask[:, :, None].astype(x.dtype)

    def project(proj, dense):
      xp, valid = proj(x, mask)
      scale, _ = proj(ones, mask)  # E applied to the all-ones column: how much bias each row gets
      kernel = dense.kernel[...].astype(x.dtype)
      bias = dense.bias[...].astype(x.dtype)
      return jnp.einsum("bkc,chd->bkhd", xp, kernel) + scale[..., None] * bias, valid

    k, valid = project(self.proj_k, self.key)
    v, _ = project(self.proj_v, self.value)
    return k, v, valid
