"""The causal Linformer and full causal attention: no token sees the future, padding is exact, and
step-by-step decoding gives the forward pass's outputs."""

import csv
import importlib.util
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from linformer.attention import SelfAttention, make_projection
from linformer.config import ConfigError, ModelConfig
from linformer.model import CausalLM

ROOT = Path(__file__).resolve().parents[1]
N, C = 16, 4  # four segments of four tokens


def causal_config(**overrides) -> ModelConfig:
  values = dict(
    vocab_size=50,
    max_len=N,
    num_layers=2,
    hidden_size=16,
    num_heads=2,
    mlp_dim=32,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    causal=True,
    segment_len=C,
    k=8,  # two compressed rows per segment
  )
  return ModelConfig(**{**values, **overrides})


SHARING = ("none", "headwise", "kv", "layerwise")
PROJECTIONS = ("learned", "random", "mean_pool", "max_pool", "conv")
EVERY_VARIANT = [dict(attention="full")] + [
  dict(sharing=s, projection=p) for s, p in itertools.product(SHARING, PROJECTIONS)
]


def variant_id(v):
  return "-".join(f"{key}={value}" for key, value in v.items())


def attention_jacobian(cfg):
  """max |d(attention output at t) / d(input at t')| over features: an (n, n) array."""
  rngs = nnx.Rngs(0)
  shared = make_projection(cfg, cfg.k, None, rngs) if cfg.sharing == "layerwise" else None
  attention = SelfAttention(cfg, 0, shared, rngs=rngs)
  x = jax.random.normal(jax.random.key(1), (1, N, cfg.hidden_size))
  mask = jnp.ones((1, N), bool)

  @jax.jit
  def jacobian(x):
    return jnp.abs(jax.jacrev(lambda x: attention(x, mask)[0])(x)[:, :, 0]).max(axis=(1, 3))

  return np.asarray(jacobian(x))


@pytest.mark.parametrize("variant", EVERY_VARIANT, ids=variant_id)
def test_no_token_sees_the_future(variant):
  """The gradient of position t's output with respect to every later input is exactly zero in
  float32; every earlier position does reach it (through the compressed rows of finished
  segments; max pooling passes gradient to one position per window and feature)."""
  blocks = attention_jacobian(causal_config(**variant))
  later = np.triu(np.ones((N, N), bool), k=1)
  assert np.all(blocks[later] == 0.0)
  earlier = blocks[~later]
  if variant.get("projection") == "max_pool":
    assert np.all(np.diag(blocks) > 0) and np.count_nonzero(earlier) > earlier.size // 2
  else:
    assert np.all(earlier > 0)


DECODE_VARIANTS = [
  dict(attention="full"),
  dict(sharing="none", projection="learned"),
  dict(sharing="headwise", projection="random"),
  dict(sharing="kv", projection="mean_pool"),
  dict(sharing="layerwise", projection="learned", k=(12, 12)),  # nonuniform layout: r = 3
  dict(sharing="none", projection="max_pool", pre_ln=True),
  dict(sharing="headwise", projection="conv", k=(4, 8)),  # per-layer k: r = 1 and 2
]


@pytest.mark.parametrize("variant", DECODE_VARIANTS, ids=variant_id)
def test_decoding_step_by_step_equals_forward(variant):
  """Feeding tokens one at a time through the cache gives the full forward pass's logits at every
  position, across all four segment boundaries (to 1e-5: only summation order differs)."""
  model = CausalLM(causal_config(**variant), rngs=nnx.Rngs(0))
  ids = jax.random.randint(jax.random.key(2), (2, N), 0, 50)
  forward = nnx.jit(lambda model, ids: model(ids, jnp.ones_like(ids)))(model, ids)

  @nnx.jit
  def step(model, tokens, cache, position):
    return model.step(tokens, cache, position)

  cache, decoded = model.init_cache(2), []
  for position in range(N):
    logits, cache = step(model, ids[:, position], cache, jnp.int32(position))
    decoded.append(logits)
  np.testing.assert_allclose(np.stack(decoded, axis=1), forward, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
  "variant",
  [dict(attention="full"), dict(projection="learned"), dict(projection="mean_pool")],
  ids=variant_id,
)
def test_padding_is_exact(variant):
  """Each row padded from its own length (mid-segment or at a boundary) to n gives the outputs of
  that row given unpadded."""
  model = CausalLM(causal_config(**variant), rngs=nnx.Rngs(0))
  ids = jax.random.randint(jax.random.key(3), (2, N), 0, 50)
  lengths = np.array([5, 8])
  forward = nnx.jit(lambda model, ids, mask: model(ids, mask))
  padded = forward(model, ids, jnp.arange(N)[None] < lengths[:, None])
  for row, length in enumerate(lengths):
    alone = forward(model, ids[row : row + 1, :length], jnp.ones((1, length)))
    np.testing.assert_allclose(padded[row, :length], alone[0], atol=1e-5, rtol=0)


def test_causal_linformer_with_k_equal_n_is_full_causal_attention():
  """With r = c (k = n) and E, F starting as pooling (here the identity per segment), compressed
  rows are the earlier keys themselves: the segment-wise model equals full causal attention."""
  cfg = causal_config(k=N, projection_init="pool")
  linformer = CausalLM(cfg, rngs=nnx.Rngs(0))
  full = CausalLM(causal_config(attention="full"), rngs=nnx.Rngs(0))
  nnx.update(linformer, nnx.state(full))  # the same weights; E and F keep their pooling init
  ids = jax.random.randint(jax.random.key(4), (2, N), 0, 50)
  mask = jnp.ones_like(ids)
  forward = nnx.jit(lambda model: model(ids, mask))
  np.testing.assert_allclose(forward(linformer), forward(full), atol=1e-5, rtol=0)


def test_causal_projection_is_block_diagonal():
  """A causal E has k rows of c columns: segment s's r rows, and no entry for other segments."""
  model = CausalLM(causal_config(sharing="headwise"), rngs=nnx.Rngs(0))
  proj = model.encoder.layers[0].attention.proj_k
  assert proj.matrix[...].shape == (8, C) and proj.rows_per_segment == 2


@pytest.mark.parametrize(
  "overrides, names",
  [
    (dict(segment_len=0), ("config.model.segment_len=0", "divisor")),
    (dict(segment_len=5), ("config.model.segment_len=5", "divisor of max_len")),
    (dict(k=6), ("config.model.k=6", "multiple of 4")),
    (dict(k=2), ("config.model.k=2", "multiple of 4")),
    (dict(k=(8, 6)), ("config.model.k[1]=6",)),
    (
      dict(attention_impl="cudnn", dtype="bfloat16"),
      ("config.model.attention_impl='cudnn'", "attention_impl=None"),
    ),
  ],
)
def test_bad_causal_configs_name_the_field(overrides, names):
  with pytest.raises(ConfigError) as error:
    causal_config(**overrides)
  for name in names:
    assert name in str(error.value)


def test_causal_lm_needs_causal_attention():
  with pytest.raises(ConfigError, match="config.model.causal=True"):
    CausalLM(causal_config(causal=False), rngs=nnx.Rngs(0))


def test_decode_benchmark_measures_both_and_sizes_the_caches(tmp_path):
  """benchmarks/decode.py on a tiny model: both decoders generate, and the cache sizes are
  full attention's L rows against the Linformer's c + k per layer, for keys and values."""
  spec = importlib.util.spec_from_file_location("decode", ROOT / "benchmarks" / "decode.py")
  decode = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(decode)
  out = tmp_path / "decode.csv"
  decode.main(
    "--contexts 64 --segment_len 16 --rows 2 --layers 1 --hidden 16 --heads 2 --vocab 50 "
    f"--steps 4 --repeats 1 --out {out}".split()
  )
  with out.open() as f:
    full, lin = list(csv.DictReader(f))
  row_bytes = 2 * 16 * 4  # keys and values, hidden 16, float32
  assert int(full["cache_bytes"]) == 64 * row_bytes
  assert int(lin["cache_bytes"]) == (16 + 8) * row_bytes  # c = 16, k = 64 * 2 / 16 = 8
  assert float(full["tokens_per_s"]) > 0 and float(lin["tokens_per_s"]) > 0
  assert float(lin["cache_ratio"]) == pytest.approx(64 / 24, rel=1e-3)
