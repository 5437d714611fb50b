"""Linformer and full attention: sharing, projections, exact padding, gradients."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from linformer.attention import FixedProjection, SelfAttention, SeqProjection
from linformer.config import PROJECTIONS, SHARING_MODES, ModelConfig
from linformer.model import Encoder

SMALL = dict(
  vocab_size=97,
  max_len=64,
  num_layers=2,
  hidden_size=32,
  num_heads=4,
  mlp_dim=64,
  k=16,
  dropout_rate=0.0,
  attention_dropout_rate=0.0,
)


def projection_vars(module):
  """Distinct projection variables (shared ones appear once in NNX state)."""
  state = nnx.state(module, nnx.Any(nnx.Param, FixedProjection))
  return {
    path: v
    for path, v in nnx.to_flat_state(state)
    if any(str(p).startswith("proj") for p in path) or "shared" in str(path)
  }


def count_matrices(module):
  """One matrix per leading index: a (heads, k, n) variable is `heads` matrices."""
  # A `matrix` is (..., k, n); a conv `kernel` is (..., taps).
  return sum(
    math.prod(v.shape[:-2]) if path[-1] == "matrix" else math.prod(v.shape[:-1])
    for path, v in projection_vars(module).items()
  )


@pytest.mark.parametrize(
  "sharing,expected", [("none", 288), ("headwise", 24), ("kv", 12), ("layerwise", 1)]
)
@pytest.mark.parametrize("projection", ["learned", "random", "conv"])
def test_distinct_matrix_counts_match_paper(sharing, expected, projection):
  # 12 layers x 12 heads, as in the paper; tiny widths so building is cheap.
  cfg = ModelConfig(
    vocab_size=11,
    max_len=32,
    num_layers=12,
    hidden_size=24,
    num_heads=12,
    mlp_dim=8,
    k=8,
    sharing=sharing,
    projection=projection,
  )
  encoder = nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0)))
  assert count_matrices(encoder) == expected


def test_sharing_is_object_identity():
  cfg = ModelConfig(**{**SMALL, "sharing": "layerwise"})
  enc = Encoder(cfg, rngs=nnx.Rngs(0))
  projs = {id(layer.attention.proj_k) for layer in enc.layers} | {
    id(layer.attention.proj_v) for layer in enc.layers
  }
  assert len(projs) == 1
  kv = Encoder(ModelConfig(**{**SMALL, "sharing": "kv"}), rngs=nnx.Rngs(0))
  assert all(layer.attention.proj_k is layer.attention.proj_v for layer in kv.layers)
  assert kv.layers[0].attention.proj_k is not kv.layers[1].attention.proj_k


def _pad(ids, n_total, rng):
  """Pads with random (non-zero) token ids so any leak of padding would show."""
  b, n = ids.shape
  pad = rng.integers(1, SMALL["vocab_size"], size=(b, n_total - n))
  mask = np.concatenate([np.ones((b, n)), np.zeros((b, n_total - n))], 1)
  return np.concatenate([ids, pad], 1).astype(np.int32), mask.astype(np.int32)


CASES = list(itertools.product(SHARING_MODES, PROJECTIONS)) + [("none", "full")]


@pytest.mark.parametrize("sharing,projection", CASES)
def test_padding_is_exact(sharing, projection):
  if projection == "full":
    cfg = ModelConfig(**{**SMALL, "attention": "full"})
  else:
    cfg = ModelConfig(**{**SMALL, "sharing": sharing, "projection": projection})
  enc = Encoder(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  length = 37  # not a multiple of the window n/k = 4, so a window is partly padding.
  ids = rng.integers(1, cfg.vocab_size, size=(2, length)).astype(np.int32)
  ref = enc(ids, np.ones_like(ids))
  for n_total in (38, 41, 64):
    pids, pmask = _pad(ids, n_total, rng)
    out = enc(pids, pmask)
    np.testing.assert_allclose(out[:, :length], ref, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_padding_exact_with_per_example_lengths(projection):
  """Rows of one batch with different lengths each match their own unpadded run."""
  cfg = ModelConfig(**{**SMALL, "projection": projection, "sharing": "headwise"})
  enc = Encoder(cfg, rngs=nnx.Rngs(1))
  rng = np.random.default_rng(1)
  lengths = [5, 16, 33, 64]
  batch = rng.integers(1, cfg.vocab_size, size=(4, 64)).astype(np.int32)
  mask = (np.arange(64)[None] < np.array(lengths)[:, None]).astype(np.int32)
  out = enc(batch, mask)
  for i, n in enumerate(lengths):
    ref = enc(batch[i : i + 1, :n], np.ones((1, n), np.int32))
    np.testing.assert_allclose(out[i, :n], ref[0], atol=1e-5, rtol=0)


def test_identity_projection_equals_full_attention():
  n = 24
  base = dict(SMALL, max_len=n, k=n)
  lin = SelfAttention(ModelConfig(**base, sharing="headwise"), 0, None, rngs=nnx.Rngs(0))
  full = SelfAttention(ModelConfig(**base, attention="full"), 0, None, rngs=nnx.Rngs(0))
  eye = jnp.eye(n)
  lin.proj_k.matrix[...] = eye
  lin.proj_v.matrix[...] = eye
  x = jax.random.normal(jax.random.key(0), (2, n, SMALL["hidden_size"]))
  mask = jnp.ones((2, n), bool)
  np.testing.assert_allclose(lin(x, mask), full(x, mask), atol=1e-5, rtol=0)
  # Same with per-head identities (sharing none).
  lin_none = SelfAttention(ModelConfig(**base, sharing="none"), 0, None, rngs=nnx.Rngs(0))
  heads_eye = jnp.broadcast_to(eye, (SMALL["num_heads"], n, n))
  lin_none.proj_k.matrix[...] = heads_eye
  lin_none.proj_v.matrix[...] = heads_eye
  np.testing.assert_allclose(lin_none(x, mask), full(x, mask), atol=1e-5, rtol=0)


def _grads(projection, sharing="headwise"):
  cfg = ModelConfig(
    **{
      **SMALL,
      "projection": projection,
      "sharing": sharing,
      "dropout_rate": 0.1,
      "attention_dropout_rate": 0.1,
    }
  )
  enc = Encoder(cfg, rngs=nnx.Rngs(0))
  ids = jnp.arange(2 * 50).reshape(2, 50) % cfg.vocab_size
  mask = jnp.arange(50)[None] < jnp.array([[50], [30]])

  def loss(model):
    out = model(ids, mask, deterministic=False, rngs=nnx.Rngs(dropout=0))
    return jnp.mean(out**2)

  return nnx.grad(loss)(enc)


@pytest.mark.slow
@pytest.mark.parametrize("projection", ["learned", "conv"])
def test_gradients_reach_trained_projections(projection):
  grads = _grads(projection)
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.isfinite(g).all()) for g in leaves)
  name = "matrix" if projection == "learned" else "kernel"
  for layer in grads["layers"].values():
    for proj in ("proj_k", "proj_v"):
      g = layer["attention"][proj][name][...]
      assert float(jnp.abs(g).max()) > 0


def test_random_projection_is_fixed():
  grads = _grads("random")
  flat = nnx.to_flat_state(grads)
  assert not any("proj" in "/".join(map(str, p)) for p, _ in flat)  # not a Param: no gradient
  cfg = ModelConfig(**{**SMALL, "projection": "random"})
  enc = Encoder(cfg, rngs=nnx.Rngs(0))
  matrix = enc.layers[0].attention.proj_k.matrix
  assert isinstance(matrix, FixedProjection)
  # Entries N(0, 1/k): check the sample variance within 10% (16*64*4*... draws; std of the
  # variance estimate is ~ sqrt(2/N) ~ 4% for N = 1024 entries per matrix).
  assert abs(float(jnp.var(matrix[...])) * cfg.k - 1.0) < 0.15


def test_variable_length_uses_first_columns():
  """An input of length n' < n is projected by the first n' columns of E."""
  cfg = ModelConfig(**{**SMALL, "sharing": "headwise"})
  proj = SeqProjection("learned", cfg.max_len, cfg.k, None, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (1, 20, 4, 8))
  out, mask = proj(x, jnp.ones((1, 20), bool))
  assert mask is None
  np.testing.assert_allclose(
    out, jnp.einsum("kn,bnhd->bkhd", proj.matrix[...][:, :20], x), atol=1e-6
  )


def test_longer_input_than_max_len_is_an_error():
  enc = Encoder(ModelConfig(**SMALL), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_len=64"):
    enc(jnp.ones((1, 65), jnp.int32), jnp.ones((1, 65), jnp.int32))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("attention", ["linformer", "full"])
def test_shapes_and_dtypes(dtype, attention):
  cfg = ModelConfig(**{**SMALL, "dtype": dtype, "attention": attention})
  enc = Encoder(cfg, rngs=nnx.Rngs(0))
  out = enc(jnp.ones((3, 40), jnp.int32), jnp.ones((3, 40), jnp.int32))
  assert out.shape == (3, 40, cfg.hidden_size)
  assert out.dtype == jnp.dtype(dtype)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(enc, nnx.Param)))
