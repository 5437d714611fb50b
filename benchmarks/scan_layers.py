r"""Compile time and step time of the train step with the layers scanned or unrolled, by depth.

    python benchmarks/scan_layers.py                       # 6, 12, 24 layers; ~10 minutes here
    python benchmarks/scan_layers.py --layers 12 --size base --n 512 --tokens_per_step 512

What runs. The project's train step (`make_trainer`: forward, backward, clipping, AdamW, one
jitted call) on the synthetic masked-LM task of `train_throughput.py`, from
`configs/pretrain.py:size=<size>` (default `small`: hidden 512, 8 heads, MLP 2048) at `--n` with
`--layers` layers, once with `config.model.scan_layers=False` (a Python loop: XLA compiles every
layer) and once with `True` (`Encoder._scanned`: one `lax.scan` over the stacked layer
parameters). For each depth both steps are lowered and compiled (timed: `lower` is JAX tracing,
`compile` is XLA), their compiled peak memory read, then `--repeats` steps timed interleaved
(unrolled, scanned, ...) after one warm-up step; medians are printed. The persistent compilation
cache is off (JAX's default), so every compile is a real one.

The table goes to benchmarks/results/scan_layers_<platform>.md. The goal of the scan is a compile
time flat in depth; its step time may differ from the unrolled one (XLA cannot fuse across layer
boundaries of a loop).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
from train_throughput import SyntheticMLMTask, get_config, timed_step

from linformer.measure import MIB, compiled_memory, ints, time_interleaved, write_report
from linformer.training import partitioning
from linformer.training.trainer import make_trainer


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
  )
  p.add_argument("--layers", type=ints, default=[6, 12, 24], help="depths to compare")
  p.add_argument("--size", default="small", help="configs/pretrain.py size preset (widths)")
  p.add_argument("--n", type=int, default=256, help="sequence length")
  p.add_argument("--k", type=int, default=64, help="Linformer projected length")
  p.add_argument("--attention", default="linformer", choices=["linformer", "full"])
  p.add_argument("--tokens_per_step", type=int, default=2048, help="batch = tokens / n")
  p.add_argument("--vocab", type=int, default=8000, help="synthetic vocabulary size")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--remat", action="store_true", help="remat each layer (policy 'full')")
  p.add_argument("--repeats", type=int, default=3, help="timed steps per cell (median)")
  p.add_argument(
    "--out", default=None, help="markdown path; None: results/scan_layers_<platform>.md"
  )
  return p.parse_args(argv)


def prepare(layers: int, scan: bool, args) -> dict:
  spec = (
    f"size={args.size},n={args.n},k={args.k},attention={args.attention},"
    f"batch={args.tokens_per_step // args.n},steps=1000"
  )
  config = get_config(spec)
  config.model.num_layers = layers
  config.model.scan_layers = scan
  config.model.remat = args.remat
  config.model.dtype = args.dtype
  config.mesh.data = 1
  mesh = partitioning.make_mesh(config.mesh)
  task = SyntheticMLMTask(config, args.vocab)
  task.setup("", per_host_batch_size=config.batch_size)
  trainer = make_trainer(config, task, mesh)
  batch = partitioning.global_batch(task.batches[0], mesh)
  t0 = time.perf_counter()
  lowered = trainer.train_step.lower(trainer.abstract_state(), batch)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  step = timed_step(compiled, trainer, task, mesh)
  step()  # warm-up
  return dict(
    layers=layers,
    form="scanned" if scan else "unrolled",
    lower_s=t1 - t0,
    compile_s=t2 - t1,
    hlo_kb=len(lowered.as_text()) / 1024,
    peak_mib=compiled_memory(compiled)["peak"] / MIB,
    call=step,
  )


def measure(args) -> list[dict]:
  """Both forms at every depth: compile numbers, then steps timed interleaved (`median_s`)."""
  rows = []
  for layers in args.layers:
    group = []
    for scan in (False, True):
      print(f"{layers} layers, {'scanned' if scan else 'unrolled'}: compiling ...", flush=True)
      group.append(prepare(layers, scan, args))
      r = group[-1]
      print(f"  trace {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s", flush=True)
    time_interleaved(group, args.repeats)
    rows += group
  return rows


def main(argv=None) -> int:
  args = parse_args(argv)
  rows = measure(args)
  platform = jax.devices()[0].platform
  lines = [
    f"Train step, layers scanned vs unrolled, on {platform} ({jax.devices()[0].device_kind}): "
    f"configs/pretrain.py size={args.size} widths, {args.attention}"
    + (f" k={args.k}" if args.attention == "linformer" else "")
    + f", n={args.n}, {args.tokens_per_step} tokens per step, {args.dtype}"
    + (", remat" if args.remat else "")
    + ".",
    "",
    "| layers | form | trace s | compile s | HLO text KiB | compiled peak MiB | step s |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['layers']} | {r['form']} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | "
      f"{r['hlo_kb']:.0f} | {r['peak_mib']:.0f} | {r.get('median_s', float('nan')):.2f} |"
    )
  lines += ["", "Scanned / unrolled:", ""]
  lines += ["| layers | compile | trace | step |", "|---|---|---|---|"]
  for un, sc in zip(rows[::2], rows[1::2]):

    def ratio(key, un=un, sc=sc):
      return sc[key] / un[key] if un.get(key) else float("nan")

    lines.append(
      f"| {un['layers']} | {ratio('compile_s'):.2f}x | {ratio('lower_s'):.2f}x | "
      f"{ratio('median_s'):.2f}x |"
    )
  scanned = [r["compile_s"] for r in rows if r["form"] == "scanned"]
  unrolled = [r["compile_s"] for r in rows if r["form"] == "unrolled"]
  if len(scanned) > 1:
    lines += [
      "",
      f"Compile time from {args.layers[0]} to {args.layers[-1]} layers: unrolled "
      f"{unrolled[-1] / unrolled[0]:.2f}x, scanned {scanned[-1] / scanned[0]:.2f}x "
      f"(median over depths: unrolled {statistics.median(unrolled):.1f} s, scanned "
      f"{statistics.median(scanned):.1f} s).",
    ]
  text = "\n".join(lines) + "\n"
  write_report(text, args.out or Path(__file__).parent / "results" / f"scan_layers_{platform}.md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
