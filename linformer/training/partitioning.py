"""The device mesh and how arrays are laid out on it.

Parameters carry logical axis names (set in `linformer.model`); `LOGICAL_RULES` maps each name
to a mesh axis. The mesh has three axes: `data` (pure data parallelism), `fsdp` (data parallel
with parameters and optimizer state sharded over it, ZeRO-3 style) and `tensor` (Megatron-style
model parallelism over heads, MLP and vocabulary). The batch is split over data and fsdp. The
same code runs on one CPU (a 1x1x1 mesh), a GPU box or a TPU pod.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from linformer.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis. Names not listed (kv, seq, seq_proj, conv_tap, embed_out) are
# replicated: they are small or would cut the per-head dimension.
LOGICAL_RULES: Mapping[str, str | None] = {
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "vocab": "tensor",
}


def make_mesh(mesh_config: Mapping[str, int], devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices."""
  devices = jax.devices() if devices is None else devices
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  unknown = set(mesh_config) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f"config.mesh has unknown axes {sorted(unknown)}; use {MESH_AXES}.")
  if sizes.count(-1) > 1:
    raise ConfigError(f"config.mesh={dict(zip(MESH_AXES, sizes))}: at most one axis may be -1.")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"config.mesh={dict(zip(MESH_AXES, sizes))}: sizes must be >= 1 or -1.")
  if -1 in sizes:
    if len(devices) % known:
      raise ConfigError(
          f"config.mesh={dict(zip(MESH_AXES, sizes))}: the fixed axes ({known} devices) do not "
          f"divide the {len(devices)} available devices. Fix the mesh sizes."
      )
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) > len(devices):
    raise ConfigError(
        f"config.mesh={dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but only "
        f"{len(devices)} are available. Fix: make the sizes multiply to at most "
        f"{len(devices)}, or set one axis to -1."
    )
  devices = devices[: math.prod(sizes)]
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def logical_to_spec(names, shape, mesh: Mesh) -> P:
  """Mesh PartitionSpec for an array; a dimension its mesh axis does not divide is replicated."""
  spec = []
  for name, dim in zip(names, shape):
    axis = LOGICAL_RULES.get(name) if name else None
    spec.append(axis if axis and dim % mesh.shape[axis] == 0 else None)
  return P(*spec)


def state_shardings(abstract_state, mesh: Mesh):
  """NamedShardings for an nnx.State (or pytree of Variables) from their logical names."""

  def one(x):
    if isinstance(x, nnx.Variable):
      names = x.get_metadata().get("out_sharding") or ()
      value = x.get_value()
      return x.replace(NamedSharding(mesh, logical_to_spec(names, value.shape, mesh)))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into global arrays sharded over the batch."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
