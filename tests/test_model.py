"""The encoder, its heads, its configuration errors, and running on 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from linformer.config import ConfigError, ModelConfig
from linformer.model import Encoder, MaskedLM, SequenceClassifier

SMALL = dict(vocab_size=97, max_len=64, num_layers=2, hidden_size=32, num_heads=4, mlp_dim=64, k=16)


def test_mlm_logits_only_at_asked_positions():
  model = MaskedLM(ModelConfig(**SMALL), rngs=nnx.Rngs(0))
  ids = jnp.arange(2 * 64).reshape(2, 64) % 97
  mask = jnp.ones_like(ids)
  positions = jnp.array([[0, 5, 9], [63, 1, 1]])
  logits = model(ids, mask, positions)
  assert logits.shape == (2, 3, 97) and logits.dtype == jnp.float32
  # Tied decoder: the same values as scoring every position and gathering.
  hidden = model.encoder(ids, mask)
  h = model.mlm_norm(jax.nn.gelu(model.mlm_dense(hidden), approximate=False))
  full = h @ model.encoder.embeddings.token.embedding[...].T + model.mlm_bias[...]
  np.testing.assert_allclose(logits, jnp.take_along_axis(full, positions[..., None], 1), atol=1e-5)


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


def test_cudnn_attention_needs_half_precision():
  with pytest.raises(ConfigError, match="attention_impl='cudnn'.*float16 or bfloat16"):
    ModelConfig(**SMALL, attention_impl="cudnn")
  ModelConfig(**SMALL, attention_impl="cudnn", dtype="bfloat16")  # fine
