"""Layers under `lax.scan` (config.model.scan_layers): the same model as the unrolled one, its
stacked parameters laid out, converted and restored like the per-layer ones."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from linformer.config import ConfigError, ModelConfig
from linformer.convert import names
from linformer.convert.hf_import import load_into
from linformer.model import MaskedLM
from linformer.training import partitioning
from tests.helpers import dot_count

TINY = dict(vocab_size=100, max_len=16, num_layers=3, hidden_size=32, num_heads=4, mlp_dim=64, k=8)


def flat(state) -> dict[tuple, np.ndarray]:
  return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def pair(**fields):
  """An unrolled MaskedLM and a scanned one holding the same parameters."""
  cfg = ModelConfig(**{**TINY, **fields, "scan_layers": False})
  unrolled = MaskedLM(cfg, rngs=nnx.Rngs(0))
  scanned_cfg = dataclasses.replace(cfg, scan_layers=True)
  scanned = load_into(MaskedLM(scanned_cfg, rngs=nnx.Rngs(1)), flat(nnx.state(unrolled)))
  return unrolled, scanned


def batch():
  ids = jax.random.randint(jax.random.key(1), (2, 16), 5, 100)
  mask = jnp.ones((2, 16), bool).at[1, 11:].set(False)
  return ids, mask, jnp.tile(jnp.arange(0, 16, 4)[None], (2, 1))


SLOW = pytest.mark.slow  # one case stays in the quick subset
CASES = [
  pytest.param(dict(sharing="headwise"), marks=SLOW),
  dict(sharing="kv", pre_ln=True),
  pytest.param(dict(sharing="none", projection="random", remat=True), marks=SLOW),
  pytest.param(
    dict(sharing="none", projection="conv", remat=True, remat_policy="save_dots"), marks=SLOW
  ),
  pytest.param(dict(attention="full", remat=True, remat_policy="save_qkv_proj"), marks=SLOW),
]


@pytest.mark.parametrize("fields", CASES, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_scanned_layers_compute_the_unrolled_model(fields):
  """Outputs to 1e-6 (float32; XLA may fuse the loop body differently), with dropout on too:
  the dropout stream is the scan's carry, so each layer draws the masks it draws unrolled (a
  wrong key would change outputs by O(1)). Gradients to 1e-6 of the largest gradient (some,
  like the key bias's, are exactly 0 in theory and float noise here), every parameter."""
  unrolled, scanned = pair(**fields)
  ids, mask, positions = batch()
  weights = jnp.arange(TINY["vocab_size"], dtype=jnp.float32) / TINY["vocab_size"]
  for deterministic in (True, False):
    a, b = (
      m(ids, mask, positions, deterministic=deterministic, rngs=nnx.Rngs(dropout=3))
      for m in (unrolled, scanned)
    )
    np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)

  def loss(model):
    logits = model(ids, mask, positions, deterministic=False, rngs=nnx.Rngs(dropout=5))
    return (logits * weights).sum()

  ga = flat(nnx.grad(loss)(unrolled))
  gb = names.unstack_layers(flat(nnx.grad(loss)(scanned)))
  assert ga.keys() == gb.keys()
  scale = max(np.abs(g).max() for g in ga.values())
  for path in ga:
    np.testing.assert_allclose(gb[path], ga[path], atol=1e-6 * scale, rtol=0, err_msg=str(path))


def test_per_layer_paths_see_the_stacked_layers():
  """Attention transfer's per-layer outputs come from views of the stack, and the gradient of
  a loss on one layer's view reaches only that layer's slice of the stack."""
  unrolled, scanned = pair(sharing="headwise")
  ids, mask, _ = batch()
  ins_a, outs_a = unrolled.encoder.attention_inputs_and_outputs(ids, mask)
  ins_b, outs_b = scanned.encoder.attention_inputs_and_outputs(ids, mask)
  for x, y in zip(outs_a + ins_a, outs_b + ins_b, strict=True):
    np.testing.assert_allclose(y, x, atol=1e-6, rtol=0)

  grads = nnx.grad(lambda m: m.encoder.attention_outputs(ins_b, mask)[1].sum())(scanned)
  e = grads.encoder.layers.attention.proj_k.matrix.get_value()
  assert e.shape[0] == 3 and np.any(e[1]) and not np.any(e[0]) and not np.any(e[2])


def test_stack_and_unstack_are_exact_inverses():
  unrolled, scanned = pair(sharing="kv")
  per_layer, stacked = flat(nnx.state(unrolled)), flat(nnx.state(scanned))
  assert names.unstack_layers(stacked).keys() == per_layer.keys()
  for path, value in names.unstack_layers(stacked).items():
    np.testing.assert_array_equal(value, per_layer[path])
  again = names.stack_layers(per_layer)
  assert again.keys() == stacked.keys()
  for path, value in again.items():
    np.testing.assert_array_equal(value, stacked[path])
  assert ("encoder", "layers", "mlp_in", "kernel") in stacked
  assert stacked[("encoder", "layers", "mlp_in", "kernel")].shape == (3, 32, 64)


def test_scan_layers_default_and_errors():
  assert not ModelConfig(**{**TINY, "num_layers": 4}).scanned  # unrolling compiles fast enough
  assert ModelConfig(**{**TINY, "num_layers": 5}).scanned
  assert ModelConfig(**{**TINY, "num_layers": 6, "attention": "full", "k": (8, 4) * 3}).scanned
  # Shapes that cannot be stacked stay unrolled by default, and are an error when asked for.
  for fields in (dict(k=(8, 8, 4, 4, 4)), dict(sharing="layerwise")):
    assert not ModelConfig(**{**TINY, "num_layers": 5, **fields}).scanned
    with pytest.raises(ConfigError, match=r"config.model.scan_layers=True: .*Fix: set scan_layers"):
      ModelConfig(**{**TINY, "num_layers": 5, **fields, "scan_layers": True})
  with pytest.raises(ConfigError, match="config.model.scan_layers='yes'"):
    ModelConfig(**{**TINY, "scan_layers": "yes"})


def test_stacked_parameters_shard_as_the_unrolled_ones_with_a_replicated_layer_axis():
  mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})

  def specs(scan):
    cfg = ModelConfig(**{**TINY, "scan_layers": scan})
    abstract = nnx.eval_shape(lambda: MaskedLM(cfg, rngs=nnx.Rngs(0)))
    shardings = partitioning.state_shardings(nnx.split(abstract, nnx.Param)[1], mesh)
    return {p: s.get_value().spec for p, s in nnx.to_flat_state(shardings)}

  unrolled, scanned = specs(False), specs(True)
  layer_paths = [p for p in unrolled if p[:3] == ("encoder", "layers", 0)]
  assert len(layer_paths) > 10
  for path in layer_paths:
    assert scanned[names.LAYERS + path[3:]] == P(None, *unrolled[path]), path
  assert scanned[("encoder", "layers", "mlp_in", "kernel")] == P(None, "fsdp", "tensor")


def test_remat_inside_the_scan_recomputes_the_layer():
  """The scanned gradient's program holds one layer's products; with remat 'full' the layer's
  forward products run again in the backward scan, with 'save_dots' they do not."""
  ids, mask, positions = batch()

  def dots(**fields):
    cfg = ModelConfig(**{**TINY, "scan_layers": True, **fields})
    model = MaskedLM(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def loss(state):
      return nnx.merge(graphdef, state)(ids, mask, positions).sum()

    return dot_count(jax.make_jaxpr(jax.grad(loss))(state).jaxpr)

  plain = dots()
  assert dots(remat=True, remat_policy="full") > plain
  assert dots(remat=True, remat_policy="save_dots") == plain
