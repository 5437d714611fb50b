r"""Per-device memory of a `size=base` model on 8 fake CPU devices: parameters, and a train step.

    python benchmarks/sharding_memory.py                 # ~10 minutes on 2 cores
    python benchmarks/sharding_memory.py --layers 2      # the same comparisons, quicker

Two measurements, each side by side in one run:

* **Parameter bytes per device** (float32 parameters only; AdamW's two moments follow the same
  layout, so the train state is three times this) of RoBERTa-base with Linformer k = 128 at
  n = 512, under `fsdp=8` and `tensor=2, fsdp=4`, with the vocabulary unpadded
  (`config.model.vocab_multiple=1`: 50265 rows) and padded to a multiple of 128 (50304, the
  default), with the parameters the sharding rules had to replicate because their size does not
  divide their mesh axis (what `partitioning.state_shardings` logs).
* **Compiled peak memory per device of the train step** (`measure.compiled_memory`: XLA's
  arguments + outputs + temporaries - donated buffers, the largest device's) of the same model,
  batch 16 on synthetic masked-LM batches (`train_throughput.SyntheticMLMTask`), with and
  without the activation-sharding constraints (`linformer.axes.activation_sharding`: the hidden
  states' batch axis on the data-parallel devices, and the gradient-accumulation carry laid out
  as the parameters), at `grad_accum_steps` 1 and 2. Nothing runs; the steps are compiled only.

Run from the repository root (`PYTHONPATH=.` or the package installed). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from unittest import mock

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
from flax import nnx  # noqa: E402
from train_throughput import SyntheticMLMTask, get_config  # noqa: E402

from linformer import axes  # noqa: E402
from linformer.config import ModelConfig  # noqa: E402
from linformer.measure import compiled_memory  # noqa: E402
from linformer.model import MaskedLM  # noqa: E402
from linformer.training import partitioning  # noqa: E402
from linformer.training.trainer import make_trainer  # noqa: E402

MESHES = {"fsdp=8": {"data": 1, "fsdp": 8}, "tensor=2, fsdp=4": {"data": 1, "fsdp": 4, "tensor": 2}}
MB = 2**20


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--layers", type=int, default=12, help="encoder layers (base: 12)")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--n", type=int, default=512)
  return p.parse_args(argv)


def param_bytes(cfg: ModelConfig, mesh_config) -> tuple[float, list[str]]:
  """(parameter bytes on the fullest device, the parameters replicated for divisibility)."""
  mesh = partitioning.make_mesh(mesh_config)
  _, params = nnx.split(nnx.eval_shape(lambda: MaskedLM(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  per_device = {d: 0 for d in mesh.devices.flat}
  replicated = []
  for path, var in nnx.to_flat_state(params):
    shape, names = var.get_value().shape, var.get_metadata().get("out_sharding") or ()
    fallbacks = []
    spec = partitioning.logical_to_spec(names, shape, mesh, None, fallbacks)
    if fallbacks:
      replicated.append(f"{'/'.join(map(str, path))} ({', '.join(fallbacks)})")
    sharding = jax.sharding.NamedSharding(mesh, spec)
    for device, index in sharding.devices_indices_map(shape).items():
      per_device[device] += 4 * math.prod(len(range(*s.indices(d))) for s, d in zip(index, shape))
  return max(per_device.values()), replicated


def step_peak(args, mesh_config, accum: int, constrained: bool) -> tuple[float, float]:
  """(compiled peak bytes per device of the train step, compile seconds)."""
  config = get_config(f"size=base,n={args.n},k=128,batch={args.batch},steps=1000")
  config.model.num_layers = args.layers
  config.model.dtype = "float32"
  config.mesh.update(**{"data": 1, "fsdp": 1, "tensor": 1, **mesh_config})
  config.grad_accum_steps = accum
  mesh = partitioning.make_mesh(config.mesh)
  task = SyntheticMLMTask(config, 50265, num_batches=1)
  task.setup("", per_host_batch_size=config.batch_size)
  off = mock.patch.object(axes, "activation_sharding", lambda mesh: contextlib.nullcontext())
  with contextlib.nullcontext() if constrained else off:
    trainer = make_trainer(config, task, mesh)
    batch = partitioning.global_batch(task.batches[0], mesh)
    start = time.perf_counter()
    compiled = trainer.train_step.lower(trainer.abstract_state(), batch).compile()
  return compiled_memory(compiled)["peak"], time.perf_counter() - start


def main(argv=None) -> int:
  args = parse_args(argv)
  base = ModelConfig(num_layers=args.layers, max_len=args.n, k=128)
  print(
    f"## Parameter bytes per device: size=base ({args.layers} layers), vocab 50265, "
    "8 fake CPU devices\n"
  )
  print("| mesh | vocab_multiple | table rows | MB per device | replicated for divisibility |")
  print("|---|---|---|---|---|")
  for name, mesh_config in MESHES.items():
    for multiple in (1, 128):
      cfg = ModelConfig(**{**base.to_dict(), "vocab_multiple": multiple})
      size, replicated = param_bytes(cfg, mesh_config)
      print(
        f"| {name} | {multiple} | {cfg.padded_vocab_size} | {size / MB:.1f} | "
        f"{'; '.join(replicated) or 'none'} |"
      )
  print(
    f"\n## Train step, compiled peak per device: size=base ({args.layers} layers), n={args.n}, "
    f"batch {args.batch}, float32\n"
  )
  print("| mesh | grad_accum_steps | unconstrained MB | constrained MB | ratio | compile s |")
  print("|---|---|---|---|---|---|")
  for name, mesh_config in MESHES.items():
    for accum in (1, 2):
      (before, t0), (after, t1) = (
        step_peak(args, mesh_config, accum, constrained) for constrained in (False, True)
      )
      print(
        f"| {name} | {accum} | {before / MB:.0f} | {after / MB:.0f} | {after / before:.2f} | "
        f"{t0:.0f} / {t1:.0f} |",
        flush=True,
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
