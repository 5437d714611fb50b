"""The mesh's axes, the logical axis names of the model's parameters, and the batch axis of its
activations.

Every parameter is created with one name per dimension (or None); `config.mesh.rules` maps names
onto the mesh axes of `linformer.training.partitioning`, so a layout is changed in the config
without touching the model. Activations are constrained on their batch axis only
(`constrain_batch`), while a train or eval step is traced under `activation_sharding`.
"""

import contextlib
import contextvars
import math

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

VOCAB = "vocab"  # token embedding rows, MLM output bias
EMBED = "embed"  # the hidden (model) width
EMBED_OUT = "embed_out"  # the output width of a square hidden -> hidden head layer
MLP = "mlp"  # the feed-forward width
HEADS = "heads"  # attention heads
KV = "kv"  # the per-head width
SEQ = "seq"  # sequence positions n (Linformer's E and F columns)
SEQ_PROJ = "seq_proj"  # projected positions k (E and F rows)
CONV_TAP = "conv_tap"  # taps of a convolutional sequence projection
LAYERS = "layers"  # the leading axis of stacked layer parameters (ModelConfig.scan_layers)

# The device mesh (linformer.training.partitioning): data parallelism, ZeRO-3 and tensor
# parallelism; config.mesh gives their sizes.
MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # a batch's rows are split over both (fsdp is data parallel too)

ALL = (VOCAB, EMBED, EMBED_OUT, MLP, HEADS, KV, SEQ, SEQ_PROJ, CONV_TAP, LAYERS)

# The default layout: Megatron-style tensor parallelism over heads, MLP and vocabulary, ZeRO-3
# (fsdp) over the hidden width; the rest replicated (small, or it would cut the head width).
DEFAULT_RULES = {VOCAB: "tensor", EMBED: "fsdp", MLP: "tensor", HEADS: "tensor"}


# The mesh of the step being traced; None outside the trainer's steps (a model called eagerly,
# decoding, the analyses), where constrain_batch changes nothing.
_MESH = contextvars.ContextVar("linformer_activation_mesh", default=None)


@contextlib.contextmanager
def activation_sharding(mesh):
  """While tracing a step on `mesh`, the model's hidden states keep their rows on the
  data-parallel devices (`constrain_batch`)."""
  token = _MESH.set(mesh)
  try:
    yield
  finally:
    _MESH.reset(token)


def constrain_batch(x):
  """`x` with its leading (batch) axis sharded over BATCH_AXES and its other axes left to XLA:
  without it, sharding propagation may replicate a layer's activations or re-shard them between
  layers (MaxText constrains its activations the same way). Unchanged outside
  `activation_sharding`, or when the batch does not divide over the devices."""
  mesh = _MESH.get()
  size = 1 if mesh is None else math.prod(mesh.shape[a] for a in BATCH_AXES)
  if size == 1 or x.shape[0] % size:
    return x
  spec = P(BATCH_AXES, *[P.UNCONSTRAINED] * (x.ndim - 1))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def constrain_like(tree, shardings):
  """`tree` laid out as `shardings` (a matching tree of NamedShardings) inside
  `activation_sharding`, e.g. gradients summed over micro-batches as the parameters are."""
  return tree if _MESH.get() is None else jax.lax.with_sharding_constraint(tree, shardings)
