"""The encoder, its heads, its configuration errors, and running on 8 devices."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from linformer import model as model_lib
from linformer.config import ConfigError, ModelConfig, resolve_dtype
from linformer.model import Encoder, MaskedLM, SequenceClassifier, gelu
from linformer.tasks.clm import chunked_lm_sums
from linformer.tasks.mlm import mlm_sums
from tests.helpers import dot_count

SMALL = dict(vocab_size=97, max_len=64, num_layers=2, hidden_size=32, num_heads=4, mlp_dim=64, k=16)


def test_gelu_is_berts_exact_gelu():
  """The erf form the model computes against float64 erf: within 2e-6 absolute over [-10, 10]
  (float32 rounding of x, erf and the product; the erfc form of jax.nn.gelu is within 1e-6)."""
  x = np.linspace(-10, 10, 20001, dtype=np.float32)
  exact = 0.5 * x.astype(np.float64) * (1 + scipy.special.erf(x.astype(np.float64) / np.sqrt(2)))
  np.testing.assert_allclose(gelu(jnp.asarray(x)), exact, rtol=0, atol=2e-6)
  np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), rtol=0, atol=1e-6)
  assert gelu(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16
  np.testing.assert_array_equal(gelu(x, approximate=True), jax.nn.gelu(x, approximate=True))


def test_mlm_logits_only_at_asked_positions():
  model = MaskedLM(ModelConfig(**SMALL), rngs=nnx.Rngs(0))
  ids = jnp.arange(2 * 64).reshape(2, 64) % 97
  mask = jnp.ones_like(ids)
  positions = jnp.array([[0, 5, 9], [63, 1, 1]])
  logits = model(ids, mask, positions)
  assert logits.shape == (2, 3, 97) and logits.dtype == jnp.float32
  # Tied decoder: the same values as scoring every position and gathering.
  hidden = model.encoder(ids, mask)
  h = model.mlm_norm(gelu(model.mlm_dense(hidden)))
  full = (h @ model.encoder.embeddings.token.embedding[...].T + model.mlm_bias[...])[..., :97]
  np.testing.assert_allclose(logits, jnp.take_along_axis(full, positions[..., None], 1), atol=1e-5)


@pytest.mark.slow
def test_padded_vocabulary_rows_are_zero_and_never_scored():
  """97 ids in a table of 128 rows (vocab_multiple): the real rows are those an unpadded table
  draws, the padding rows are zero, no logit scores them and no gradient reaches them (so AdamW,
  whose update and decay of a zero parameter with zero gradient are zero, keeps them zero)."""
  padded = MaskedLM(ModelConfig(**SMALL), rngs=nnx.Rngs(0))
  exact = MaskedLM(ModelConfig(**SMALL, vocab_multiple=1), rngs=nnx.Rngs(0))
  table = padded.encoder.embeddings.token.embedding[...]
  assert table.shape == (128, 32) and padded.mlm_bias[...].shape == (128,)
  np.testing.assert_array_equal(table[:97], exact.encoder.embeddings.token.embedding[...])
  np.testing.assert_array_equal(table[97:], 0)
  ids = jnp.arange(2 * 64).reshape(2, 64) % 97
  positions = jnp.array([[0, 5, 9], [63, 1, 1]])
  args = (ids, jnp.ones_like(ids), positions)
  np.testing.assert_array_equal(padded(*args), exact(*args))

  def loss(model):
    return jnp.mean(jax.nn.log_softmax(model(*args))[..., 3])

  grads = nnx.grad(loss)(padded)
  np.testing.assert_array_equal(grads.encoder.embeddings.token.embedding[...][97:], 0)
  np.testing.assert_array_equal(grads.mlm_bias[...][97:], 0)


@pytest.mark.parametrize("num_labels", [1, 3])
def test_classifier_head(num_labels):
  model = SequenceClassifier(ModelConfig(**SMALL, type_vocab_size=2), num_labels, rngs=nnx.Rngs(0))
  ids = jnp.ones((4, 20), jnp.int32)
  out = model(ids, jnp.ones_like(ids), token_type_ids=jnp.zeros_like(ids))
  assert out.shape == (4, num_labels)


@pytest.mark.slow
@pytest.mark.parametrize("pre_ln", [False, True])
def test_pre_and_post_ln_and_remat_agree(pre_ln):
  """Rematerialisation changes memory, not values: same loss and gradients."""
  ids = jnp.arange(2 * 40).reshape(2, 40) % 97
  mask = jnp.ones_like(ids)

  def loss(model):
    return jnp.mean(model(ids, mask, deterministic=False, rngs=nnx.Rngs(dropout=3)) ** 2)

  plain = Encoder(ModelConfig(**SMALL, pre_ln=pre_ln), rngs=nnx.Rngs(0))
  remat = Encoder(ModelConfig(**SMALL, pre_ln=pre_ln, remat=True), rngs=nnx.Rngs(0))
  g1 = nnx.grad(loss)(plain)
  g2 = nnx.grad(loss)(remat)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert hasattr(plain, "final_norm") == pre_ln


def test_remat_policies_decide_which_matmuls_the_backward_pass_runs_again():
  """2 layers of Linformer attention + MLP run 20 matmuls forward; a gradient without remat runs
  60 (two per forward product in the backward pass). With remat the backward pass recomputes
  the products its policy did not keep: all 20 ('full'), all but the 6 query/key/value
  projections ('save_qkv_proj'), attention's 8 batched products ('save_dots_no_batch'), none
  ('save_dots'). The gradients are those of no remat (float32, recomputation order)."""
  ids = jnp.arange(2 * 64).reshape(2, 64) % 97

  def grad_of(**remat):
    model = Encoder(ModelConfig(**SMALL, **remat), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(ids, jnp.ones_like(ids)) ** 2)
    assert dot_count(jax.make_jaxpr(loss)(params).jaxpr) == 20
    grad = jax.grad(loss)
    return dot_count(jax.make_jaxpr(grad)(params).jaxpr), lambda: jax.jit(grad)(params)

  plain, grads = grad_of()
  assert plain == 60
  expected = {"full": 80, "save_qkv_proj": 74, "save_dots_no_batch": 68, "save_dots": 60}
  for policy, dots in expected.items():
    assert grad_of(remat=True, remat_policy=policy)[0] == dots, policy
  # The named projections' path (test_pre_and_post_ln_and_remat_agree checks 'full').
  named = grad_of(remat=True, remat_policy="save_qkv_proj")[1]()
  for a, b in zip(jax.tree.leaves(grads()), jax.tree.leaves(named), strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_jit_on_eight_devices():
  assert jax.device_count() == 8, "tests/conftest.py fakes 8 CPU devices"
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  model = MaskedLM(ModelConfig(**SMALL), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  batch = NamedSharding(mesh, P("data"))
  ids = jax.device_put(jnp.arange(8 * 64).reshape(8, 64) % 97, batch)
  positions = jax.device_put(jnp.zeros((8, 4), jnp.int32), batch)

  @jax.jit
  def forward(state, ids, positions):
    return nnx.merge(graphdef, state)(ids, jnp.ones_like(ids), positions)

  sharded = forward(state, ids, positions)
  assert len(sharded.sharding.device_set) == 8
  np.testing.assert_allclose(
    sharded, model(np.asarray(ids), np.ones((8, 64)), np.zeros((8, 4), np.int32)), atol=1e-5
  )


def test_parameters_carry_logical_axis_names():
  model = nnx.eval_shape(lambda: MaskedLM(ModelConfig(**SMALL), rngs=nnx.Rngs(0)))
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  flat = {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(specs)}
  assert flat["encoder/embeddings/token/embedding"] == P("vocab", "embed")
  assert flat["encoder/layers/0/attention/query/kernel"] == P("embed", "heads", "kv")
  assert flat["encoder/layers/0/mlp_in/kernel"] == P("embed", "mlp")
  assert flat["encoder/layers/0/attention/proj_k/matrix"] == P("heads", "seq_proj", "seq")


BAD = [
  (dict(k=65), "config.model.k=65.*larger than the sequence length"),
  (dict(hidden_size=30), "config.model.hidden_size=30.*not divisible by num_heads=4"),
  (dict(sharing="rows"), "config.model.sharing='rows'.*unknown sharing mode"),
  (dict(projection="fft"), "config.model.projection='fft'.*unknown projection"),
  (dict(attention="sparse"), "config.model.attention='sparse'.*unknown attention"),
  (dict(projection="mean_pool", k=24), "mean_pool uses kernel and stride.*not divisible"),
  (dict(projection="conv", k=[16, 24]), r"k\[1\]=24.*conv uses kernel and stride"),
  (dict(k=[16, 16, 16]), "has 3 entries for num_layers=2"),
  (dict(k=[16, 32], sharing="layerwise"), "layerwise sharing uses one matrix"),
  (dict(k=0), "config.model.k=0.*must be positive"),
  (dict(dropout_rate=1.0), "dropout_rate=1.0.*must be in"),
  (dict(dtype="float8"), "config.model.dtype='float8'.*unknown dtype"),
  (dict(num_layers=0), "num_layers=0.*positive integer"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_configuration_is_a_clear_error(overrides, message):
  with pytest.raises(ConfigError, match=message) as info:
    ModelConfig(**{**SMALL, **overrides})
  assert "Fix:" in str(info.value)


def test_unknown_field_is_an_error():
  with pytest.raises(ConfigError, match="unknown field.*'heads'"):
    ModelConfig.from_dict({**SMALL, "heads": 4})


def test_nonuniform_k_builds_per_layer_shapes():
  enc = Encoder(ModelConfig(**{**SMALL, "k": [32, 8]}), rngs=nnx.Rngs(0))
  assert enc.layers[0].attention.proj_k.matrix.shape == (4, 32, 64)
  assert enc.layers[1].attention.proj_k.matrix.shape == (4, 8, 64)
  assert ModelConfig(**{**SMALL, "k": [32, 8]}).to_dict()["k"] == [32, 8]


def test_auto_dtype_is_bfloat16_on_accelerators_and_float32_on_cpu():
  assert ModelConfig().dtype == ModelConfig(dtype=resolve_dtype("auto")).dtype
  assert [resolve_dtype("auto", p) for p in ("gpu", "tpu", "cpu")] == [
    "bfloat16",
    "bfloat16",
    "float32",
  ]
  assert resolve_dtype("float32", "gpu") == "float32"  # an explicit dtype is kept
  if jax.default_backend() == "cpu":
    assert ModelConfig(**SMALL).dtype == "float32"  # CPU results are float32's, unchanged


def test_cudnn_attention_needs_half_precision():
  with pytest.raises(ConfigError, match="attention_impl='cudnn'.*float16 or bfloat16"):
    ModelConfig(**SMALL, attention_impl="cudnn", dtype="float32")
  ModelConfig(**SMALL, attention_impl="cudnn", dtype="bfloat16")  # fine


def test_full_attention_through_cudnn_with_attention_dropout_is_refused():
  """cuDNN's attention here has no dropout: full attention would silently train on the explicit
  (b, h, n, n) path. Linformer's explicit path is (b, h, n, k) and stays allowed."""
  cudnn = dict(SMALL, attention_impl="cudnn", dtype="bfloat16")
  with pytest.raises(ConfigError, match=r"config.model.attention_dropout_rate=0.1: .*Fix: set"):
    ModelConfig(**cudnn, attention="full")
  ModelConfig(**cudnn, attention="full", attention_dropout_rate=0.0)  # fine
  ModelConfig(**cudnn, attention="linformer")  # fine: k keys, no n x n memory


def _mlm_pair(vocab=5000):
  """A float32 and a bfloat16-compute MaskedLM with the same (float32) parameters, and a batch."""
  base = ModelConfig(**{**SMALL, "vocab_size": vocab, "dropout_rate": 0.0})
  f32 = MaskedLM(base, rngs=nnx.Rngs(0))
  b16 = MaskedLM(dataclasses.replace(base, dtype="bfloat16"), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(5, vocab, (4, 64)), jnp.int32)
  positions = jnp.asarray(rng.integers(0, 64, (4, 10)), jnp.int32)
  targets = jnp.asarray(rng.integers(5, vocab, (4, 10)), jnp.int32)
  return f32, b16, (ids, jnp.ones_like(ids), positions), targets


def test_float32_logits_are_the_tied_decoder_exactly():
  f32, _, (ids, mask, positions), _ = _mlm_pair()
  h = jnp.take_along_axis(f32.encoder(ids, mask), positions[..., None], 1)
  h = f32.mlm_norm(gelu(f32.mlm_dense(h)))
  expected = (f32.encoder.embeddings.token.attend(h) + f32.mlm_bias[...])[..., :5000]
  np.testing.assert_array_equal(f32(ids, mask, positions), expected)  # float32 runs unchanged


def test_bf16_logits_are_accumulated_and_returned_in_float32():
  """Under bf16 compute the logits matmul takes the bf16 hidden states and table and accumulates
  in float32: equal to the float32 product of the bf16-rounded operands up to float32 summation
  order (1e-5 relative), where bf16 logits would be off by their rounding, 2^-9 = 2e-3 relative."""
  _, b16, (ids, mask, positions), _ = _mlm_pair()
  h = jnp.take_along_axis(b16.encoder(ids, mask), positions[..., None], 1)
  logits = b16.logits(h)
  hh = b16.mlm_norm(gelu(b16.mlm_dense(h))).astype(jnp.float32)
  table = b16.encoder.embeddings.token.embedding[...].astype(jnp.bfloat16).astype(jnp.float32)
  expected = (jnp.dot(hh, table.T, precision="highest") + b16.mlm_bias[...])[..., :5000]
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_bf16_mlm_loss_is_within_its_bound_of_float32():
  """The same parameters in bf16 and float32 compute. Cross-entropy moves by at most twice the
  largest logit change (log-sum-exp and the target logit each move by at most that), and bf16
  (unit roundoff 2^-8) through 2 layers, LayerNorms and the head moves logits of order 1 by a few
  roundings: under 2e-2."""
  f32, b16, inputs, targets = _mlm_pair()
  weights = jnp.ones(targets.shape)
  lf, lb = f32(*inputs), b16(*inputs)
  logit_change = float(jnp.max(jnp.abs(lb - lf)))
  loss = lambda logits: float(mlm_sums(logits, targets, weights)["loss"]) / weights.size
  assert logit_change < 2e-2
  assert abs(loss(lb) - loss(lf)) <= 2 * logit_change


@pytest.mark.slow
def test_causal_lm_loss_in_chunks_equals_the_whole_logits():
  """Chunks of 8 positions over n = 37 (the last chunk padded with zero weights) give the loss
  and gradients of scoring every position at once, to float32 summation order."""
  cfg = ModelConfig(**{**SMALL, "max_len": 40, "attention": "full", "causal": True})
  cfg = dataclasses.replace(cfg, dropout_rate=0.0, attention_dropout_rate=0.0)
  graphdef, params = nnx.split(model_lib.CausalLM(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(5, 97, (3, 37)), jnp.int32)
  mask = jnp.ones((3, 37), bool).at[1, 30:].set(False)
  targets = jnp.asarray(rng.integers(5, 97, (3, 37)), jnp.int32)
  weights = mask.astype(jnp.float32)

  def whole(p):
    return mlm_sums(nnx.merge(graphdef, p)(ids, mask), targets, weights)

  def chunked(p):
    m = nnx.merge(graphdef, p)
    return chunked_lm_sums(m.logits, m.encoder(ids, mask), targets, weights, chunk=8)

  (a, sums_a), grads_a = jax.value_and_grad(lambda p: (whole(p)["loss"], whole(p)), has_aux=True)(
    params
  )
  (b, sums_b), grads_b = jax.value_and_grad(
    lambda p: (chunked(p)["loss"], chunked(p)), has_aux=True
  )(params)
  np.testing.assert_allclose(b, a, rtol=1e-6)
  assert float(sums_b["correct"]) == float(sums_a["correct"])
  assert float(sums_b["weight"]) == float(sums_a["weight"])
  for ga, gb in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
    np.testing.assert_allclose(gb, ga, rtol=1e-4, atol=1e-6)
