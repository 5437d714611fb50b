r"""Table 3: inference time and memory of the whole model, Linformer (and LSH attention) against
the Transformer.

    python benchmarks/table3.py                 # CPU preset: ~5 minutes on 2 shared cores
    # An NVIDIA GPU, the paper's every size (n up to 65536), ~10 minutes; stops starting models
    # after 540 s, so a rerun with --resume finishes what is left:
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python benchmarks/table3.py --preset gpu --time_budget 540
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python benchmarks/table3.py --preset gpu --resume

Presets (every flag overrides its preset value): `cpu` times 2 layers at n 512..4096, k 128..1024,
4096 tokens per batch, float32, and reports the memory of the 12-layer model (--memory_layers:
compiled for its memory analysis, not run); `gpu` times all 12 layers at every n and k of the
paper, 65536 tokens per batch, bfloat16, one subprocess per model (--isolate).

What runs. The project's `Encoder` (embeddings + the layer stack, no task head) at RoBERTa-base
widths (hidden 768, 12 heads, MLP 3072; 12 layers unless --layers says otherwise) with a
1000-token vocabulary (--vocab), so that the embedding table (768 x 1000) is a negligible part of
the parameters and the memory is that of the layer stack. Two models per sequence length n:

* Transformer: `attention='full'`, measured once per n (it has no k);
* Linformer: `attention='linformer'`, `sharing='layerwise'` (one learned n x k matrix for every
  layer, head, key and value, as in the paper's Table 3), `projection='learned'`, for each
  k < n in --ks (the paper's cells; the others are "-").
* LSH attention (Reformer, not in the paper's table): `attention='lsh'` with each number of hash
  rounds in --lsh_rounds (4 and 8 in both presets; empty to skip), chunks of --lsh_chunk tokens
  (64), the Reformer paper's 2 n / chunk buckets, evaluation's fixed rotations. It runs the
  project's own einsums whatever --impl says (`jax.nn.dot_product_attention` has no LSH).

All take random token ids, an all-ones attention mask, dropout off (deterministic=True), in
--dtype. The Transformer and the Linformer compute softmax attention with
`jax.nn.dot_product_attention` under --impl: the model's `attention_impl` field picks the
implementation. `--impl best` is cuDNN flash attention on NVIDIA GPUs (it needs
float16/bfloat16; a model whose cuDNN attention does not compile falls back to XLA, and the
fallback is recorded in the CSV and the table notes) and XLA elsewhere.

Batch (--batch_policy):

* `tokens` (default): one token budget per batch for every cell, batch = max(1, --tokens // n)
  sequences, the same for every model, so the time and memory ratios compare equal work.
* `max_fit`: the paper's "largest batch that fits": for each model separately, the largest power
  of two (<= --max_batch) whose compiled memory fits under the memory limit. Ratios are then per
  sequence: speed-up = (full ms / full batch) / (Linformer ms / Linformer batch), and likewise
  for memory.

What is measured, per model:

* time: the jit-compiled forward, one warm-up call not timed, then the median of --repeats calls,
  each ended with `block_until_ready`. In one process the models of one n are timed
  round-robin, so load from other processes on a shared machine slows all of them alike.
* compiled memory: XLA's memory analysis of the compiled forward
  (`jax.jit(f).lower(...).compile().memory_analysis()`), peak = argument bytes (parameters and
  inputs) + output bytes + temp bytes (the intermediates) - aliased bytes (none: the forward
  donates nothing), `linformer.measure.compiled_memory`. Works on every backend, and is known
  before running. Memory saved = full peak / Linformer (or LSH) peak (per sequence).
* device peak (GPUs): `device.memory_stats()['peak_bytes_in_use']` after the calls. The counter
  cannot be reset, so it is recorded only with --isolate (each model in its own subprocess, the
  GPU preset's default); the table then has a second memory-saved table from it.

Cells that do not fit are marked, not dropped: "OOM" when the compiled peak exceeds the memory
limit (the device's `bytes_limit`, on CPU the machine's available RAM, or --memory_limit_gib),
checked before running, or when a run fails with RESOURCE_EXHAUSTED; "skipped (time)" when one
call would take longer than --cell_time_limit seconds (predicted from the compiled FLOPs and the
fastest FLOP rate seen so far in the sweep, or found on the warm-up call); "error" otherwise.
A ratio cell whose Transformer did not run reads e.g. "full OOM (paper 20)".

Outputs, in --out_dir (default benchmarks/results): table3_<platform>.md (the settings, both
ratio tables in the paper's layout, rows n and columns k, each measured value beside the paper's,
LSH attention's ratios to the Transformer, rows n and columns rounds, and the raw times and
memory), table3_<platform>.csv (one row per model measurement, ratios and
paper values on the Linformer rows; rewritten after every model, so --resume can continue a run
that was stopped), and table3_<platform>.png (speed-up and memory saved against n, one line per k,
the paper dashed, LSH dotted).

--time_budget stops starting new models after that many seconds (they read "not run") and
writes the outputs; --resume reuses the CSV's "ok" measurements made with the same settings, so
a sweep cut by a time limit is finished by rerunning it (with nothing left to measure, --resume
just rewrites the table and plot from the CSV).

One model's measurement is `linformer.analysis.table3`; the ratios, tables and plot
`linformer.analysis.table3_report`; timing, compiled memory and OOM detection `linformer.measure`.
Run from the repository root with the package installed (`pip install -e .`) or `PYTHONPATH=.`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
from tqdm import tqdm

from linformer.analysis.table3 import (
  KEY_FIELDS,
  RECORD_FIELDS,
  batch_for,
  best_implementation,
  finish,
  measure_isolated,
  prepare,
  specs_for,
)
from linformer.analysis.table3_report import (
  PAPER_KS,
  PAPER_NS,
  add_ratios,
  load_csv,
  markdown,
  plot,
  settings_text,
)
from linformer.measure import GIB, ints, memory_limit, write_csv

RESULTS = Path(__file__).resolve().parent / "results"

PRESETS = {
  # What 2 CPU cores do in a few minutes: 2 layers of the 12 (time and memory of the layer
  # stack scale with the layer count in both models; the printed settings say so).
  # Memory is that of the 12-layer model all the same: compiled (not run) for its memory analysis.
  "cpu": dict(
    ns=[512, 1024, 2048, 4096],
    ks=[128, 256, 512, 1024],
    layers=2,
    memory_layers=12,
    tokens=4096,
    dtype="float32",
    repeats=3,
    cell_time_limit=60.0,
    isolate=False,
    lsh_rounds=[4, 8],
    lsh_chunk=64,
  ),
  # The paper's whole table on an accelerator: 12 layers, every n and k, bfloat16 (cuDNN flash
  # attention needs 16-bit inputs; the paper's V100 ran fairseq in float16), one subprocess
  # per model so that the device's peak-memory counter starts at zero for each.
  "gpu": dict(
    ns=list(PAPER_NS),
    ks=list(PAPER_KS),
    layers=12,
    memory_layers=12,
    tokens=65536,
    dtype="bfloat16",
    repeats=5,
    cell_time_limit=60.0,
    isolate=True,
    lsh_rounds=[4, 8],
    lsh_chunk=64,
  ),
}


def run_sweep(args, meta: dict, on_update: Callable[[list[dict]], None] | None = None):
  """Measures every model of the sweep; returns the records with ratios."""
  common = dict(
    layers=args.layers,
    memory_layers=args.memory_layers,
    dtype=args.dtype,
    vocab=args.vocab,
    impl=meta["impl"],
    max_batch=args.max_batch,
  )
  extra = dict(batch_policy=args.batch_policy, tokens=args.tokens, platform=meta["platform"])
  done = {}
  if args.resume and args.csv.exists():
    for r in load_csv(args.csv):
      if str(r.get("status", "")).startswith("ok"):
        done[tuple(r.get(key) for key in KEY_FIELDS)] = r
  records, flop_rate, start = [], None, time.monotonic()
  limit = meta.get("memory_limit")
  specs = lambda n: specs_for(n, args.ks, common, args.lsh_rounds, args.lsh_chunk)
  total = sum(len(specs(n)) for n in args.ns)
  with tqdm(total=total, unit="model", disable=args.quiet) as bar:
    for n in args.ns:
      group = []
      for spec in specs(n):
        spec["batch"] = batch_for(args.batch_policy, n, args.tokens)
        key = tuple(dict(spec, **extra, impl_requested=spec["impl"]).get(f) for f in KEY_FIELDS)
        bar.set_description(
          f"n={n} {spec['model']}"
          + (f" k={spec['k']}" if spec["k"] else "")
          + (f" rounds={spec['rounds']}" if spec.get("rounds") else "")
        )
        if key in done:
          group.append(done[key])
        elif args.time_budget and time.monotonic() - start > args.time_budget:
          rec = {f: spec.get(f) for f in RECORD_FIELDS + ("memory_layers", "batch")}
          group.append(
            dict(
              rec,
              **extra,
              impl_requested=spec["impl"],
              status="not run (time budget; rerun with --resume)",
            )
          )
        elif args.isolate:
          rec = measure_isolated(
            spec,
            limit,
            args.cell_time_limit,
            flop_rate,
            args.repeats,
            timeout=args.cell_time_limit * (args.repeats + 2) + 600,
          )
          group.append(dict(rec, **extra))
        else:
          group.append(dict(prepare(spec, limit, args.cell_time_limit, flop_rate), **extra))
        bar.update(1)
        if args.isolate or key in done:
          flop_rate = max([flop_rate or 0.0] + [r.get("flop_rate") or 0.0 for r in group])
          flop_rate = flop_rate or None
      if not args.isolate:
        bar.set_description(f"n={n} timing")
        finish([r for r in group if "call" in r], args.repeats)
        flop_rate = max([flop_rate or 0.0] + [r.get("flop_rate") or 0.0 for r in group]) or None
      records += group
      add_ratios(records)
      if on_update:
        on_update(records)
  return records


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description="Table 3: whole-model inference time and memory, Linformer vs Transformer.",
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  p.add_argument(
    "--preset",
    choices=["auto", "cpu", "gpu"],
    default="auto",
    help="defaults for the flags below; auto: gpu on GPUs/TPUs, cpu on CPUs",
  )
  p.add_argument("--ns", type=ints, help="sequence lengths (rows)")
  p.add_argument("--max_n", type=int, help="drop ns above this")
  p.add_argument("--ks", type=ints, help="projected lengths (columns); only k < n is run")
  p.add_argument("--lsh_rounds", type=ints, help="LSH attention's hash rounds (empty: no LSH)")
  p.add_argument("--lsh_chunk", type=int, help="LSH attention's chunk length (at most n)")
  p.add_argument("--layers", type=int, help="encoder layers timed (the paper: 12)")
  p.add_argument(
    "--memory_layers",
    type=int,
    help="layers of the model whose compiled memory is reported (compiled only, "
    "not run, when it differs from --layers)",
  )
  p.add_argument("--batch_policy", choices=["tokens", "max_fit"], default="tokens")
  p.add_argument("--tokens", type=int, help="token budget per batch for --batch_policy tokens")
  p.add_argument("--max_batch", type=int, default=256, help="cap for --batch_policy max_fit")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
  p.add_argument(
    "--impl",
    choices=["best", "xla", "cudnn", "default"],
    default="best",
    help="jax.nn.dot_product_attention implementation; default: attention_impl=None, the "
    "project's own einsums (attention.attend)",
  )
  p.add_argument("--vocab", type=int, default=1000)
  p.add_argument("--repeats", type=int)
  p.add_argument("--cell_time_limit", type=float, help="seconds per forward call")
  p.add_argument(
    "--memory_limit_gib",
    type=float,
    help="OOM threshold; default the device's limit (CPU: available RAM)",
  )
  p.add_argument(
    "--isolate",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="each model in its own subprocess (device peak memory per model)",
  )
  p.add_argument(
    "--time_budget",
    type=float,
    help="seconds: start no new model after this (the rest is 'not run'); write "
    "the outputs and exit, so that a rerun with --resume continues",
  )
  p.add_argument(
    "--resume",
    action="store_true",
    help="reuse the 'ok' measurements of the same settings from the CSV",
  )
  p.add_argument("--out_dir", type=Path, default=RESULTS)
  p.add_argument("--name", help="output name; default table3_<platform>")
  p.add_argument("--quiet", action="store_true")
  args = p.parse_args(argv)
  platform = jax.default_backend()
  preset = PRESETS[
    args.preset if args.preset != "auto" else ("cpu" if platform == "cpu" else "gpu")
  ]
  for key, value in preset.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.max_n:
    args.ns = [n for n in args.ns if n <= args.max_n]
  name = args.name or f"table3_{platform}"
  args.csv, args.md, args.png = (args.out_dir / f"{name}.{ext}" for ext in ("csv", "md", "png"))
  return args


def main(argv=None) -> int:
  # Set before JAX starts its GPU client: allocate on demand, so that with --isolate the parent
  # process holds no GPU memory and each worker's peak_bytes_in_use is its own.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  args = parse_args(argv)
  device = jax.devices()[0]
  impl = {"best": best_implementation(), "default": None}.get(args.impl, args.impl)
  limit = int(args.memory_limit_gib * GIB) if args.memory_limit_gib else memory_limit()
  meta = dict(
    platform=jax.default_backend(),
    device=device.device_kind,
    jax=jax.__version__,
    dtype=args.dtype,
    layers=args.layers,
    memory_layers=args.memory_layers,
    vocab=args.vocab,
    impl=impl,
    batch_policy=args.batch_policy,
    tokens=args.tokens,
    max_batch=args.max_batch,
    repeats=args.repeats,
    cell_time_limit=args.cell_time_limit,
    isolate=args.isolate,
    memory_limit=limit,
    ns=args.ns,
    ks=args.ks,
    lsh_rounds=args.lsh_rounds,
    lsh_chunk=args.lsh_chunk,
  )
  print(settings_text(meta), flush=True)

  def save(records):
    write_csv(records, args.csv)

  records = run_sweep(args, meta, on_update=save)
  fallbacks = sorted({r["note"] for r in records if r.get("note")})
  if fallbacks:
    meta["fallbacks"] = "fell back: " + "; ".join(fallbacks)
  text = markdown(records, meta)
  args.md.parent.mkdir(parents=True, exist_ok=True)
  args.md.write_text(text)
  save(records)
  memory = (
    "" if args.memory_layers == args.layers else f" (memory: {args.memory_layers} layers, compiled)"
  )
  policy = (
    f"batch = {args.tokens} tokens // n"
    if args.batch_policy == "tokens"
    else "largest batch that fits"
  )
  plot(
    records,
    args.png,
    f"Table 3 on {meta['platform']} ({meta['device']}): {args.layers} "
    f"layer(s) timed{memory}, {args.dtype}, {policy}, attention {impl}; "
    "dashed: the paper (V100, 12 layers)",
  )
  print("\n" + text)
  print(f"wrote {args.md}, {args.csv}, {args.png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
