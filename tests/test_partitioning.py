"""Sharding rules from the config: logical axis names onto the (data, fsdp, tensor) mesh."""

import contextlib

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from linformer import axes
from linformer.config import ConfigError, ModelConfig
from linformer.model import Encoder, MaskedLM
from linformer.training import partitioning

CFG = ModelConfig(
  vocab_size=100, max_len=32, num_layers=1, hidden_size=32, num_heads=4, mlp_dim=64, k=8
)


def shardings(mesh_config, rules=None, cfg=CFG):
  mesh = partitioning.make_mesh(mesh_config)
  abstract = nnx.eval_shape(lambda: MaskedLM(cfg, rngs=nnx.Rngs(0)))
  _, params = nnx.split(abstract, nnx.Param)
  return nnx.to_pure_dict(partitioning.state_shardings(params, mesh, rules))


def test_default_rules_shard_embed_over_fsdp_and_mlp_over_tensor():
  s = shardings({"data": 2, "fsdp": 2, "tensor": 2})
  assert s["encoder"]["layers"][0]["mlp_in"]["kernel"].spec == P("fsdp", "tensor")
  assert s["encoder"]["embeddings"]["token"]["embedding"].spec == P("tensor", "fsdp")
  assert s["encoder"]["layers"][0]["attention"]["query"]["kernel"].spec == P("fsdp", "tensor", None)


def test_rules_from_the_config_change_the_layout():
  rules = {"embed": None, "mlp": "fsdp"}
  s = shardings({"data": 2, "fsdp": 2, "tensor": 2}, rules)
  assert s["encoder"]["layers"][0]["mlp_in"]["kernel"].spec == P(None, "fsdp")
  assert s["encoder"]["embeddings"]["token"]["embedding"].spec == P("tensor", None)


def test_an_indivisible_axis_is_replicated_and_logged_by_name(caplog):
  cfg = ModelConfig(
    vocab_size=101,
    vocab_multiple=1,  # no padding: 101 rows divide no axis
    max_len=32,
    num_layers=1,
    hidden_size=32,
    num_heads=4,
    mlp_dim=64,
    k=8,
  )
  with caplog.at_level("WARNING"):
    s = shardings({"data": 4, "tensor": 2}, cfg=cfg)
  assert s["encoder"]["embeddings"]["token"]["embedding"].spec == P(None, "fsdp")
  assert s["mlm_bias"].spec == P(None)
  lines = [r.getMessage() for r in caplog.records if "Replicated" in r.getMessage()]
  assert len(lines) == 1
  assert "encoder/embeddings/token/embedding: vocab (101) on tensor (2)" in lines[0]
  assert "mlm_bias: vocab (101) on tensor (2)" in lines[0]


@pytest.mark.parametrize(
  "rules, message",
  [
    ({"embedding": "fsdp"}, "unknown logical axes \\['embedding'\\]"),
    ({"embed": "model"}, "config.mesh.rules.embed='model': not a mesh axis"),
  ],
)
def test_bad_rules_name_the_field(rules, message):
  with pytest.raises(ConfigError, match=message):
    shardings({"data": 1}, rules)


@pytest.mark.parametrize("mesh_config", [{"fsdp": 8}, {"tensor": 2, "fsdp": 4}])
def test_no_parameter_of_the_base_model_is_replicated(mesh_config, caplog):
  """RoBERTa-base's vocabulary, 50265 = 3 x 5 x 3351, divides no mesh axis above 1; padded to a
  multiple of 128 (config.model.vocab_multiple) the embedding table and the MLM bias shard as
  the other parameters do, and nothing falls back to replication."""
  base = ModelConfig()  # size=base: 12 layers of 768, RoBERTa's vocabulary, k=128
  assert base.vocab_size == 50265 and base.padded_vocab_size == 50304
  with caplog.at_level("WARNING"):
    s = shardings({"data": 1, **mesh_config}, cfg=base)
  assert not [r.getMessage() for r in caplog.records if "Replicated" in r.getMessage()]
  if "tensor" in mesh_config:
    assert s["encoder"]["embeddings"]["token"]["embedding"].spec == P("tensor", "fsdp")
    assert s["mlm_bias"].spec == P("tensor")


def test_hidden_states_are_constrained_to_the_data_parallel_axes_inside_a_step():
  """Inside `activation_sharding` (the trainer's steps) the embeddings' and every layer's output
  keep their rows on the data and fsdp devices, the other axes left to XLA; outside (eager
  calls, decoding) the model adds no constraint."""
  mesh = partitioning.make_mesh({"data": 2, "fsdp": 4})
  model = Encoder(CFG, rngs=nnx.Rngs(0))
  ids = jnp.ones((8, 32), jnp.int32)

  def constraints(in_step):
    def forward(ids):
      with axes.activation_sharding(mesh) if in_step else contextlib.nullcontext():
        return model(ids, jnp.ones_like(ids))

    eqns = jax.make_jaxpr(forward)(ids).eqns
    return [e.params["sharding"].spec for e in eqns if e.primitive.name == "sharding_constraint"]

  unconstrained = P.UNCONSTRAINED
  assert constraints(True) == [P(("data", "fsdp"), unconstrained, unconstrained)] * (
    1 + CFG.num_layers
  )
  assert constraints(False) == []
