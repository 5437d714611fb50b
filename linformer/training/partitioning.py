"""The device mesh and how arrays are laid out on it.

Parameters carry logical axis names (`linformer.axes`); `config.mesh.rules` maps each name to a
mesh axis (or None: replicated), as the Flax lm1b example keeps its rules in the config. The mesh
has three axes: `data` (pure data parallelism), `fsdp` (data parallel with parameters and
optimizer state sharded over it, ZeRO-3 style) and `tensor` (Megatron-style model parallelism
over heads, MLP and vocabulary). The batch is split over data and fsdp. The
same code runs on one CPU (a 1x1x1 mesh), a GPU box or a TPU pod.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from linformer import axes
from linformer.config import ConfigError

MESH_AXES = axes.MESH_AXES
BATCH_AXES = axes.BATCH_AXES


def default_rules() -> dict[str, str | None]:
  """`config.mesh.rules`: every logical axis name, None where it is replicated."""
  return {name: axes.DEFAULT_RULES.get(name) for name in axes.ALL}


def check_rules(rules: Mapping[str, str | None]) -> dict[str, str | None]:
  """The rules with defaults for names a config does not list (configs saved before rules were
  configurable); unknown names or mesh axes are errors."""
  rules = dict(rules or {})
  unknown = sorted(set(rules) - set(axes.ALL))
  if unknown:
    raise ConfigError(
      f"config.mesh.rules has unknown logical axes {unknown}; known: {list(axes.ALL)}."
    )
  for name, axis in rules.items():
    if axis is not None and axis not in MESH_AXES:
      raise ConfigError(
        f"config.mesh.rules.{name}={axis!r}: not a mesh axis. Fix: use one of "
        f"{MESH_AXES}, or None to replicate."
      )
  return {**default_rules(), **rules}


def make_mesh(mesh_config: Mapping[str, int], devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices."""
  devices = jax.devices() if devices is None else devices
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  unknown = set(mesh_config) - set(MESH_AXES) - {"rules"}
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
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def fitting_mesh(mesh_config: Mapping[str, int], batch_size: int, devices=None) -> Mesh:
  """`make_mesh(mesh_config)` if this machine has its devices and its data-parallel size divides
  the batch; else the most devices that divide the batch, all on the data axis (e.g. evaluating
  on 1 device a checkpoint written on a 2x2x2 mesh). One process only: several processes need
  the run's mesh, or one given explicitly."""
  devices = jax.devices() if devices is None else devices
  try:
    mesh = make_mesh(mesh_config, devices)
    if batch_size % data_parallel_size(mesh) == 0:
      return mesh
  except ConfigError:
    if jax.process_count() > 1:
      raise
  data = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0)
  logging.warning(
    "config.mesh=%s does not fit the %d devices here; using data=%d, fsdp=1, tensor=1.",
    {k: v for k, v in mesh_config.items() if k != "rules"},
    len(devices),
    data,
  )
  return make_mesh({"data": data, "fsdp": 1, "tensor": 1}, devices)


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def logical_to_spec(
  names,
  shape,
  mesh: Mesh,
  rules: Mapping[str, str | None] | None = None,
  fallbacks: list[str] | None = None,
) -> P:
  """Mesh PartitionSpec for an array; a dimension its mesh axis does not divide is replicated
  (and described in `fallbacks`)."""
  rules = default_rules() if rules is None else rules
  spec = []
  for name, dim in zip(names, shape):
    axis = rules.get(name) if name else None
    if axis and dim % mesh.shape[axis]:
      if fallbacks is not None:
        fallbacks.append(f"{name} ({dim}) on {axis} ({mesh.shape[axis]})")
      axis = None
    spec.append(axis)
  return P(*spec)


def state_shardings(abstract_state, mesh: Mesh, rules: Mapping[str, str | None] | None = None):
  """NamedShardings for an nnx.State (or pytree of Variables) from their logical names. A
  parameter that falls back to replication because its size does not divide its mesh axis is
  logged once, by name."""
  rules = check_rules(rules)
  replicated = []

  def one(path, x):
    if isinstance(x, nnx.Variable):
      if not hasattr(x.get_value(), "shape"):  # optax.MaskedNode: no array (multi_transform)
        return x
      names = x.get_metadata().get("out_sharding") or ()
      fallbacks = []
      spec = logical_to_spec(names, x.get_value().shape, mesh, rules, fallbacks)
      keys = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
      if fallbacks and "opt_state" not in keys[:1]:  # the optimizer's copies follow the params
        replicated.append(f"{'/'.join(keys)}: {', '.join(fallbacks)}")
      return x.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, P())

  shardings = jax.tree_util.tree_map_with_path(
    one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable)
  )
  if replicated and jax.process_index() == 0:
    logging.warning(
      "Replicated instead of sharded (size not divisible by the mesh axis): %s",
      "; ".join(replicated),
    )
  return shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into global arrays sharded over the batch."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }
