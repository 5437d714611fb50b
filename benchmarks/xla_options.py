r"""The train step compiled under different XLA compiler options, timed interleaved in one process.

    PYTHONPATH=. python benchmarks/xla_options.py                  # the CPU options below, peer
    PYTHONPATH=. python benchmarks/xla_options.py --preset minilm --n 256 --rounds 12
    PYTHONPATH=. python benchmarks/xla_options.py \
        --variant default= --variant no_library_fusions=xla_cpu_experimental_ynn_fusion_type=

A variant is `name=option:value;option:value` (empty: XLA's defaults); options are XLA
DebugOptions fields as `jax.stages.Lowered.compile(compiler_options=...)` takes them, so an enum
is spelled as its proto value (LIBRARY_FUSION_TYPE_DOT). Every variant is the same lowered
program (profile_step.py's presets), compiled once per variant; then `--rounds` rounds each run
one step of every variant in turn, so load from other processes hits all alike, and each
variant's median is printed with its speed against the first. The steps start from the same
state and batches, so their losses must agree (printed). Written to
benchmarks/results/xla_options_<platform>.md.

The defaults are the XLA:CPU options that could plausibly speed up this step: XLA:CPU's
library fusions (YNNPACK: dots, reductions; `xla_cpu_experimental_ynn_fusion_type`) narrowed or
off, oneDNN for matmuls, and the concurrency-optimised scheduler.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
from profile_step import PRESETS, build

from linformer.measure import write_report

YNN = "xla_cpu_experimental_ynn_fusion_type"
DEFAULT_VARIANTS = (
  "default=",
  f"library_dots_only={YNN}:LIBRARY_FUSION_TYPE_DOT",
  f"no_library_fusions={YNN}:",
  "onednn=xla_cpu_use_onednn:true",
  "concurrency_scheduler=xla_cpu_enable_concurrency_optimized_scheduler:true",
  "default_again=",  # the same program as the first: how far apart noise alone puts two rows
)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
  """'name=opt:value;opt:value' -> (name, {opt: value}); true / false become booleans (XLA takes
  no 'true' string for a bool option)."""
  name, sep, rest = text.partition("=")
  if not sep or not name:
    raise ValueError(f"xla_options.py: --variant {text!r}: write name=option:value;option:value")
  options = {}
  for part in filter(None, rest.split(";")):
    option, sep, value = part.partition(":")
    if not sep:
      raise ValueError(
        f"xla_options.py: --variant {text!r}: {part!r} is not option:value "
        "(write name=option:value;option:value)"
      )
    options[option] = {"true": True, "false": False}.get(value.lower(), value)
  return name, options


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
  )
  p.add_argument("--preset", default="peer", choices=sorted(PRESETS))
  p.add_argument("--n", type=int, default=1024, help="sequence length")
  p.add_argument("--rounds", type=int, default=10, help="timed steps per variant (median)")
  p.add_argument("--variant", action="append", help="name=option:value;...; repeatable")
  p.add_argument("--out", default=None, help="markdown; None: results/xla_options_<platform>.md")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:  # every variant checked before anything compiles
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
  except ValueError as e:
    print(e, file=sys.stderr)
    return 2
  runs = []
  for name, options in variants:
    print(f"compiling {name} {options or ''} ...", flush=True)
    compiled, state, batches, cfg, batch, _ = build(args.preset, args.n, compiler_options=options)
    runs.append(dict(name=name, options=options, compiled=compiled, state=state, times=[]))
    runs[-1]["batches"] = batches

  def step(run, i):
    start = time.perf_counter()
    run["state"], metrics = run["compiled"](run["state"], run["batches"][i % 2])
    jax.block_until_ready((run["state"], metrics))
    run["loss"] = float(metrics["loss"])
    return time.perf_counter() - start

  for i in range(2):  # warm-up
    for run in runs:
      step(run, i)
  for i in range(args.rounds):
    for run in runs:
      run["times"].append(step(run, 2 + i))
  tokens = batch * args.n
  base = statistics.median(runs[0]["times"])
  lines = [
    f"Train step under XLA options on {jax.devices()[0].platform}: preset {args.preset}, "
    f"n = {args.n}, batch {batch}; medians of {args.rounds} interleaved steps "
    "(`benchmarks/xla_options.py`).",
    "",
    "| variant | options | step (s) | tokens/s | against the first | last loss |",
    "|---|---|---|---|---|---|",
  ]
  for run in runs:
    med = statistics.median(run["times"])
    opts = "; ".join(f"`{k}={v}`" for k, v in run["options"].items()) or "XLA's defaults"
    lines.append(
      f"| {run['name']} | {opts} | {med:.3f} | {tokens / med:,.0f} | {base / med:.2f}x | "
      f"{run['loss']:.6g} |"
    )
  platform = jax.devices()[0].platform
  write_report(
    "\n".join(lines) + "\n",
    args.out or Path(__file__).parent / "results" / f"xla_options_{platform}.md",
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
