r"""Table 3: inference time and memory of the whole model, Linformer against the Transformer.

    python benchmarks/table3.py                 # CPU preset: ~5 minutes on 2 shared cores
    python -m linformer.analysis.efficiency ... # the same CLI
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

Both take random token ids, an all-ones attention mask, dropout off (deterministic=True), in
--dtype. Both compute softmax attention with `jax.nn.dot_product_attention` under --impl: the
model's `attention_impl` field picks the implementation. `--impl best` is cuDNN flash attention on NVIDIA GPUs (it needs float16/bfloat16; a
model whose cuDNN attention does not compile falls back to XLA, and the fallback is recorded in
the CSV and the table notes) and XLA elsewhere.

Batch (--batch_policy):

* `tokens` (default): one token budget per batch for every cell, batch = max(1, --tokens // n)
  sequences, the same for both models, so the time and memory ratios compare equal work.
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
  inputs) + output bytes + temp bytes (the intermediates). Works on every backend, and is known
  before running. Memory saved = full peak / Linformer peak (per sequence).
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
and the raw times and memory), table3_<platform>.csv (one row per model measurement, ratios and
paper values on the Linformer rows; rewritten after every model, so --resume can continue a run
that was stopped), and table3_<platform>.png (speed-up and memory saved against n, one line per k,
the paper dashed).

--time_budget stops starting new models after that many seconds (they read "not run") and
writes the outputs; --resume reuses the CSV's "ok" measurements made with the same settings, so
a sweep cut by a time limit is finished by rerunning it (with nothing left to measure, --resume
just rewrites the table and plot from the CSV).

This module also holds the timing and memory helpers that benchmarks/attention.py uses.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from linformer.config import ModelConfig
from linformer.model import Encoder

MIB = 2**20
GIB = 2**30
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"

# ---------------------------------------------------------------------------------------------
# The paper's Table 3 (one 16 GB V100, layerwise sharing, largest batch that fits).

PAPER_NS = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
PAPER_KS = (128, 256, 512, 1024, 2048)
_PAPER_SPEEDUP = (
    (1.5, 1.3), (1.7, 1.6, 1.3), (2.6, 2.4, 2.1, 1.3), (3.4, 3.2, 2.8, 2.2, 1.3),
    (5.5, 5.0, 4.4, 3.5, 2.1), (8.6, 7.8, 7.0, 5.6, 3.3), (13, 12, 11, 8.8, 5.0),
    (20, 18, 16, 14, 7.9),
)
_PAPER_MEMORY = (
    (1.7, 1.5), (3.0, 2.9, 1.8), (6.1, 5.6, 3.6, 2.0), (14, 13, 8.3, 4.3, 2.3),
    (28, 26, 17, 8.5, 4.5), (56, 48, 32, 16, 8), (56, 48, 36, 18, 16), (60, 52, 40, 20, 18),
)
PAPER_SPEEDUP = {(n, k): v for n, row in zip(PAPER_NS, _PAPER_SPEEDUP)
                 for k, v in zip(PAPER_KS, row)}
PAPER_MEMORY = {(n, k): v for n, row in zip(PAPER_NS, _PAPER_MEMORY)
                for k, v in zip(PAPER_KS, row)}

PRESETS = {
    # What 2 CPU cores do in a few minutes: 2 layers of the 12 (time and memory of the layer
    # stack scale with the layer count in both models; the printed settings say so).
    # Memory is that of the 12-layer model all the same: compiled (not run) for its memory analysis.
    "cpu": dict(ns=[512, 1024, 2048, 4096], ks=[128, 256, 512, 1024], layers=2, memory_layers=12,
                tokens=4096, dtype="float32", repeats=3, cell_time_limit=60.0, isolate=False),
    # The paper's whole table on an accelerator: 12 layers, every n and k, bfloat16 (cuDNN flash
    # attention needs 16-bit inputs; the paper's V100 ran fairseq in float16), one subprocess
    # per model so that the device's peak-memory counter starts at zero for each.
    "gpu": dict(ns=list(PAPER_NS), ks=list(PAPER_KS), layers=12, memory_layers=12, tokens=65536,
                dtype="bfloat16", repeats=5, cell_time_limit=60.0, isolate=True),
}

# ---------------------------------------------------------------------------------------------
# Shared helpers: memory limit, compiled memory, interleaved timing, formatting, CSV.


def ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v]


def memory_limit() -> int | None:
  """Bytes a computation may use: the device's allocator limit, on CPU the available RAM."""
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return stats["bytes_limit"]
  if jax.default_backend() == "cpu":
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  return None


def compile_forward(module: nnx.Module, inputs: tuple):
  """The module's deterministic forward, jit-compiled for these inputs: (compiled, state).
  Call as `compiled(state, *inputs)`."""
  graphdef, state = nnx.split(module)
  forward = lambda state, *xs: nnx.merge(graphdef, state)(*xs, deterministic=True)
  return jax.jit(forward).lower(state, *inputs).compile(), state


def compiled_memory(compiled) -> dict[str, int]:
  """XLA's memory analysis: temp (intermediates), argument, output, and peak = their sum."""
  mem = compiled.memory_analysis()
  out = dict(temp=mem.temp_size_in_bytes, argument=mem.argument_size_in_bytes,
             output=mem.output_size_in_bytes)
  out["peak"] = out["temp"] + out["argument"] + out["output"]
  return out


def compiled_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    return flops if flops > 0 else None
  except Exception:  # noqa: BLE001 -- an estimate only; some backends have none
    return None


def is_oom(error: BaseException) -> bool:
  return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error) or (
      "out of memory" in str(error).lower())


def timed_call(compiled, state, inputs) -> Callable[[], float]:
  """A function running one call to completion and returning its wall time in seconds."""
  def call():
    start = time.perf_counter()
    jax.block_until_ready(compiled(state, *inputs))
    return time.perf_counter() - start
  return call


def time_interleaved(group: list[dict], repeats: int) -> None:
  """Times the cells of a group round-robin (each a dict with a `call` and a `times` list), so
  that load from other processes on a shared machine slows them alike; sets each cell's median
  `ms` and drops its `call`."""
  for _ in range(repeats):
    for r in group:
      if "call" in r:
        r["times"].append(r["call"]())
  for r in group:
    if r.pop("call", None):
      r["ms"] = 1e3 * statistics.median(r.pop("times"))


def ratio(a, b):
  return a / b if a is not None and b else None


def fmt(value, spec, missing="—", suffix=""):
  return missing if value is None else format(value, spec) + suffix


def write_csv(rows: list[dict], path: Path) -> None:
  """Written whole to a temporary file, then renamed: never a half file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fields = list(dict.fromkeys(key for r in rows for key in r))
  tmp = path.with_suffix(path.suffix + ".tmp")
  with tmp.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for r in rows:
      writer.writerow({key: f"{v:.4g}" if isinstance(v, float) else v for key, v in r.items()})
  tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Choosing jax.nn.dot_product_attention's implementation, for this benchmark's traces only.


def best_implementation(backend: str | None = None) -> str:
  """cuDNN flash attention on NVIDIA GPUs, XLA elsewhere."""
  backend = backend or jax.default_backend()
  kind = jax.devices()[0].device_kind.lower() if backend == "gpu" else ""
  return "cudnn" if backend in ("gpu", "cuda") and "amd" not in kind else "xla"


# ---------------------------------------------------------------------------------------------
# One model measurement.


def encoder_config(attention: str, n: int, k: int | None, *, layers: int = 12,
                   dtype: str = "float32", vocab: int = 1000, sharing: str = "layerwise",
                   projection: str = "learned", impl: str | None = None) -> ModelConfig:
  """RoBERTa-base widths, dropout off; k is ignored for full attention."""
  return ModelConfig(vocab_size=vocab, max_len=n, num_layers=layers, attention=attention,
                     k=k or 128 if attention == "linformer" else min(128, n), sharing=sharing,
                     projection=projection, dropout_rate=0.0, attention_dropout_rate=0.0,
                     dtype=dtype, attention_impl=impl)


def build_encoder(cfg: ModelConfig, batch: int, abstract: bool = False):
  """The Encoder (parameters initialised by one jitted call; shapes only when `abstract`, enough
  to compile) and its inputs (ids, mask)."""
  make = lambda: Encoder(cfg, rngs=nnx.Rngs(0))
  shape = (batch, cfg.max_len)
  if abstract:
    return nnx.eval_shape(make), (jax.ShapeDtypeStruct(shape, jnp.int32),
                                  jax.ShapeDtypeStruct(shape, jnp.bool_))
  ids = jax.random.randint(jax.random.key(1), shape, 0, cfg.vocab_size)
  return nnx.jit(make)(), (ids, jnp.ones(shape, bool))


def _compile_model(spec: dict, batch: int, impl: str, layers: int | None = None,
                   abstract: bool = False):
  cfg = encoder_config(spec["model"], spec["n"], spec["k"], layers=layers or spec["layers"],
                       dtype=spec["dtype"], vocab=spec["vocab"], impl=impl)
  model, inputs = build_encoder(cfg, batch, abstract)
  compiled, state = compile_forward(model, inputs)
  return compiled, state, inputs


def compile_cell(spec: dict, batch: int) -> dict:
  """Compiles one model at one batch with the requested implementation, falling back to XLA when
  cuDNN attention does not compile: {compiled, state, inputs, impl, note}."""
  impl, note = spec["impl"], ""
  try:
    compiled, state, inputs = _compile_model(spec, batch, impl)
  except Exception as e:  # noqa: BLE001
    if impl == "xla" or is_oom(e):
      raise
    note = f"{impl} failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); xla used"
    impl = "xla"
    compiled, state, inputs = _compile_model(spec, batch, impl)
  return dict(compiled=compiled, state=state, inputs=inputs, impl=impl, note=note)


def fit_batch(spec: dict, limit: int | None, max_batch: int) -> tuple[int | None, dict | None]:
  """The largest power-of-two batch <= max_batch whose compiled peak fits under `limit`, and
  its compiled cell; (None, compiled cell at batch 1) when even one sequence does not fit."""
  best, batch = (None, None), 1
  while batch <= max_batch:
    cell = compile_cell(spec, batch)
    if limit is not None and compiled_memory(cell["compiled"])["peak"] > limit:
      return best if best[0] else (None, cell)
    best, batch = (batch, cell), batch * 2
  return best


def prepare(spec: dict, limit: int | None, time_limit: float | None,
            flop_rate: float | None) -> dict:
  """Compiles one model (spec: model, n, k, layers, dtype, vocab, impl, batch or max_batch),
  checks its memory and predicted time, runs its warm-up call; returns its record, with a
  timed `call` when it is to be timed."""
  rec = {key: spec[key] for key in ("model", "n", "k", "layers", "dtype", "vocab")}
  rec.update(memory_layers=spec.get("memory_layers") or spec["layers"],
             impl_requested=spec["impl"], batch=spec.get("batch"), status="ok")
  try:
    if spec.get("batch"):
      cell = compile_cell(spec, spec["batch"])
    else:
      rec["batch"], cell = fit_batch(spec, limit, spec["max_batch"])
      if rec["batch"] is None:
        rec["batch"] = 1
    compiled = cell["compiled"]
    mem = compiled_memory(compiled)
    flops = compiled_flops(compiled)
    rec.update(impl=cell["impl"], note=cell["note"], run_peak_bytes=mem["peak"], flops=flops)
    memory_layers = rec["memory_layers"]
    # The memory columns are those of the model with `memory_layers` layers: the timed one, or
    # a compile-only copy of it with more layers (shapes only: nothing is allocated or run).
    shown = mem if memory_layers == spec["layers"] else compiled_memory(
        _compile_model(spec, rec["batch"], cell["impl"], memory_layers, abstract=True)[0])
    rec.update(temp_bytes=shown["temp"], argument_bytes=shown["argument"],
               output_bytes=shown["output"], peak_bytes=shown["peak"])
    if limit is not None and mem["peak"] > limit:
      rec["status"] = f"OOM (compiled {mem['peak'] / GIB:.2f} GiB > {limit / GIB:.2f} GiB)"
      return rec
    if time_limit is not None and flops and flop_rate and flops / flop_rate > time_limit:
      rec["status"] = (f"skipped (time): predicted {flops / flop_rate:.0f} s per call > "
                       f"{time_limit:.0f} s")
      return rec
    call = timed_call(compiled, cell["state"], cell["inputs"])
    warmup = call()
    rec["warmup_s"] = warmup
    if time_limit is not None and warmup > time_limit:
      rec["status"] = f"skipped (time): warm-up call {warmup:.0f} s > {time_limit:.0f} s"
      return rec
    rec.update(call=call, times=[])
  except Exception as e:  # noqa: BLE001 -- a failing cell is reported, the sweep goes on
    rec["status"] = ("OOM" if is_oom(e) else "error") + (
        f": {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
  return rec


def finish(records: list[dict], repeats: int, device_peak: bool = False) -> None:
  """Times the prepared records round-robin; adds ms, ms per sequence, the FLOP rate and, with
  `device_peak` (one model in a fresh process), the device's peak bytes in use."""
  lists = [r.get("times") for r in records]  # time_interleaved drops them; the CSV keeps them
  time_interleaved(records, repeats)
  stats = jax.devices()[0].memory_stats() or {}
  for r, times in zip(records, lists):
    if times:
      r["times_ms"] = " ".join(f"{1e3 * t:.2f}" for t in times)
    if r.get("ms") is not None:
      r["ms_per_seq"] = r["ms"] / r["batch"]
      if r.get("flops"):
        r["flop_rate"] = r["flops"] / (r["ms"] / 1e3)
    if device_peak and "peak_bytes_in_use" in stats:
      r["device_peak_bytes"] = stats["peak_bytes_in_use"]


def measure_isolated(spec: dict, limit, time_limit, flop_rate, repeats, timeout) -> dict:
  """One model in a fresh Python process (the device's peak-memory counter starts at zero)."""
  payload = json.dumps(dict(spec=spec, limit=limit, time_limit=time_limit, flop_rate=flop_rate,
                            repeats=repeats))
  root = Path(__file__).resolve().parents[2]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(root)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  try:
    proc = subprocess.run([sys.executable, "-m", "linformer.analysis.efficiency",
                           "--_worker", payload], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=root)
  except subprocess.TimeoutExpired:
    rec = {key: spec.get(key) for key in ("model", "n", "k", "layers", "dtype", "vocab")}
    rec.update(impl_requested=spec["impl"], batch=spec.get("batch"),
               status=f"skipped (time): subprocess over {timeout:.0f} s")
    return rec
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    rec = {key: spec.get(key) for key in ("model", "n", "k", "layers", "dtype", "vocab")}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    rec.update(impl_requested=spec["impl"], batch=spec.get("batch"),
               status=("OOM" if is_oom(RuntimeError(proc.stderr)) else "error") +
               f": subprocess exit {proc.returncode}: {tail}")
    return rec
  return json.loads(lines[-1])


def _worker(payload: str) -> None:
  args = json.loads(payload)
  rec = prepare(args["spec"], args["limit"], args["time_limit"], args["flop_rate"])
  finish([rec], args["repeats"], device_peak=True)
  print(json.dumps(rec))


# ---------------------------------------------------------------------------------------------
# The sweep, the ratios and the tables.

KEY_FIELDS = ("model", "n", "k", "layers", "memory_layers", "dtype", "vocab", "impl_requested",
              "batch_policy", "tokens")


def specs_for(n: int, ks: Iterable[int], common: dict) -> list[dict]:
  """The Transformer at n, then the Linformer at every k < n (the paper's cells)."""
  out = [dict(common, model="full", n=n, k=None)]
  out += [dict(common, model="linformer", n=n, k=k) for k in ks if k < n]
  return out


def batch_for(policy: str, n: int, tokens: int) -> int | None:
  """The batch of the `tokens` policy; None for `max_fit` (found per model)."""
  return max(1, tokens // n) if policy == "tokens" else None


def add_ratios(records: list[dict]) -> list[dict]:
  """Adds, on every Linformer record, the speed-up and memory saved against the Transformer at
  the same n (per sequence), and the paper's values."""
  full = {r["n"]: r for r in records if r["model"] == "full"}
  for r in records:
    if r["model"] != "linformer":
      continue
    f = full.get(r["n"], {})
    per_seq = lambda rec, key: (rec[key] / rec["batch"]
                                if rec.get(key) is not None and rec.get("batch") else None)
    r["speedup"] = ratio(f.get("ms_per_seq"), r.get("ms_per_seq"))
    ok = lambda rec: str(rec.get("status", "")).startswith("ok")
    r["memory_saved"] = (ratio(per_seq(f, "peak_bytes"), per_seq(r, "peak_bytes"))
                         if ok(f) and ok(r) else None)
    r["temp_ratio"] = (ratio(per_seq(f, "temp_bytes"), per_seq(r, "temp_bytes"))
                       if ok(f) and ok(r) else None)
    r["device_memory_saved"] = ratio(per_seq(f, "device_peak_bytes"),
                                     per_seq(r, "device_peak_bytes"))
    r["paper_speedup"] = PAPER_SPEEDUP.get((r["n"], r["k"]))
    r["paper_memory_saved"] = PAPER_MEMORY.get((r["n"], r["k"]))
  return records


def short_status(status: str | None) -> str:
  """'OOM', 'skipped (time)', 'error' or 'not run' from a record's status."""
  if not status or status.startswith("not run"):
    return "not run"
  if status.startswith("skipped (time)"):
    return "skipped (time)"
  return status.split(":")[0].split(" (")[0]


def ratio_cell(value: float | None, paper: float | None, full: dict | None,
               lin: dict | None) -> str:
  """e.g. '2.1 (paper 2.6)', 'OOM (paper 20)', 'full OOM (paper 20)'."""
  if value is not None:
    text = f"{value:.2f}" if value < 10 else f"{value:.1f}"
  elif lin is None:
    text = "not run"
  elif not str(lin.get("status", "")).startswith("ok"):
    text = short_status(lin.get("status"))
  elif full is None or not str(full.get("status", "")).startswith("ok"):
    text = "full " + short_status(full and full.get("status"))
  else:
    text = "—"
  return text if paper is None else f"{text} (paper {paper:g})"


def ratio_table(records: list[dict], key: str, paper: dict, ns, ks) -> str:
  full = {r["n"]: r for r in records if r["model"] == "full"}
  lin = {(r["n"], r["k"]): r for r in records if r["model"] == "linformer"}
  lines = ["| n \\ k | " + " | ".join(str(k) for k in ks) + " |",
           "|---|" + "---|" * len(ks)]
  for n in ns:
    cells = []
    for k in ks:
      if k >= n:
        cells.append("-")
        continue
      r = lin.get((n, k))
      cells.append(ratio_cell(r and r.get(key), paper.get((n, k)), full.get(n), r))
    lines.append(f"| {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def raw_table(records: list[dict]) -> str:
  lines = ["| model | n | k | batch | impl | ms / batch | ms / sequence | compiled peak MiB "
           "| temp MiB | device peak MiB | status |", "|---|" + "---:|" * 9 + "---|"]
  mib = lambda b: fmt(b and b / MIB, ".0f")
  for r in sorted(records, key=lambda r: (r["n"], r["model"] != "full", r["k"] or 0)):
    lines.append(" | ".join([
        f"| {'Transformer' if r['model'] == 'full' else 'Linformer'}", str(r["n"]),
        str(r["k"] or "—"), str(r.get("batch") or "—"), str(r.get("impl") or "—"),
        fmt(r.get("ms"), ".1f"), fmt(r.get("ms_per_seq"), ".2f"), mib(r.get("peak_bytes")),
        mib(r.get("temp_bytes")), mib(r.get("device_peak_bytes")),
        str(r.get("status", "not run")) + " |"]))
  return "\n".join(lines)


def settings_text(meta: dict) -> str:
  policy = (f"fixed token budget: batch = max(1, {meta['tokens']} // n) sequences, the same for "
            "both models" if meta["batch_policy"] == "tokens" else
            f"largest power-of-two batch that fits (<= {meta['max_batch']}), found per model "
            "from XLA's compiled memory; ratios per sequence")
  limit = meta.get("memory_limit")
  return "\n".join([
      f"- Platform: {meta['platform']} ({meta['device']}), JAX {meta['jax']}; {meta['dtype']}.",
      f"- Model: the project's Encoder, {meta['layers']} layer(s) timed"
      + ("" if meta["layers"] == 12 else " (the paper's model has 12; fewer to fit this "
         "machine's time budget)")
      + ("" if meta["memory_layers"] == meta["layers"] else
         f", memory of the {meta['memory_layers']}-layer model (compiled, not run)")
      + ", hidden 768, 12 heads, MLP 3072, vocabulary "
      f"{meta['vocab']} (so the embeddings do not dominate), no task head; forward only, "
      "dropout off, random ids, no padding.",
      "- Linformer: layerwise sharing (one learned n x k matrix for all layers, heads, keys and "
      "values), as in the paper's Table 3. Transformer: full attention.",
      f"- Attention: jax.nn.dot_product_attention, implementation {meta['impl']!r} requested"
      + (f" ({meta['fallbacks']})" if meta.get("fallbacks") else "") + ".",
      f"- Batch policy: {policy}. (The paper used the largest batch that fits a 16 GB V100.)",
      f"- Time: median of {meta['repeats']} forward calls after one warm-up"
      + (", the models of one n timed round-robin" if not meta["isolate"] else
         ", each model in its own subprocess") + f"; cells over {meta['cell_time_limit']:g} s "
      "per call are 'skipped (time)'.",
      "- Memory: XLA's compiled memory analysis, peak = arguments (parameters, inputs) + output "
      "+ temp bytes; cells whose compiled peak exceeds "
      + (f"{limit / GIB:.1f} GiB" if limit else "the device's memory") + " are 'OOM'."
      + ("" if meta["isolate"] else " Device peak_bytes_in_use is recorded only with --isolate "
         "(it cannot be reset between models in one process)."),
  ])


def markdown(records: list[dict], meta: dict) -> str:
  ns, ks = meta["ns"], meta["ks"]
  parts = [f"# Table 3 on {meta['platform']}: Linformer (layerwise sharing) vs Transformer, "
           "inference", "", settings_text(meta), "",
           "## Speed-up (Transformer time / Linformer time, per sequence)", "",
           ratio_table(records, "speedup", PAPER_SPEEDUP, ns, ks), "",
           "## Memory saved (Transformer / Linformer compiled peak, per sequence)", "",
           ratio_table(records, "memory_saved", PAPER_MEMORY, ns, ks), "",
           "## Working memory saved (temp bytes only: intermediates, parameters and "
           "inputs excluded)", "",
           ratio_table(records, "temp_ratio", PAPER_MEMORY, ns, ks)]
  if any(r.get("device_memory_saved") for r in records):
    parts += ["", "## Memory saved (device peak_bytes_in_use, per sequence)", "",
              ratio_table(records, "device_memory_saved", PAPER_MEMORY, ns, ks)]
  parts += ["", "## Raw measurements", "", raw_table(records), ""]
  return "\n".join(parts)


def plot(records: list[dict], path: Path, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  lin = [r for r in records if r["model"] == "linformer"]
  ks = sorted({r["k"] for r in lin})
  colors = dict(zip(ks, plt.get_cmap("viridis")(
      [i / max(1, len(ks) - 1) * 0.9 for i in range(len(ks))])))
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  panels = (("speedup", PAPER_SPEEDUP, "speed-up (Transformer time / Linformer time)"),
            ("memory_saved", PAPER_MEMORY, "memory saved (Transformer / Linformer peak)"))
  for ax, (key, paper, ylabel) in zip(axes, panels):
    for k in ks:
      rows = sorted((r for r in lin if r["k"] == k), key=lambda r: r["n"])
      pts = [(r["n"], r[key]) for r in rows if r.get(key)]
      if pts:
        ax.plot(*zip(*pts), "o-", color=colors[k], label=f"k={k} measured")
      ppts = [(n, paper[(n, k)]) for n in sorted({r["n"] for r in lin}) if (n, k) in paper]
      if ppts:
        ax.plot(*zip(*ppts), "s--", color=colors[k], alpha=0.6, markersize=4,
                label=f"k={k} paper")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_yticks([t for t in (0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100)
                   if low <= t <= high])
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ns = sorted({r["n"] for r in lin})
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("sequence length n")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=8, ncol=2)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def load_csv(path: Path) -> list[dict]:
  """Records from a previous run's CSV, numbers parsed back."""
  def parse(v):
    if v in ("", "None"):
      return None
    for kind in (int, float):
      try:
        return kind(v)
      except ValueError:
        pass
    return v
  with path.open() as f:
    return [{key: parse(v) for key, v in row.items()} for row in csv.DictReader(f)]


def run_sweep(args, meta: dict, on_update: Callable[[list[dict]], None] | None = None):
  """Measures every model of the sweep; returns the records with ratios."""
  common = dict(layers=args.layers, memory_layers=args.memory_layers, dtype=args.dtype,
                vocab=args.vocab, impl=meta["impl"], max_batch=args.max_batch)
  extra = dict(batch_policy=args.batch_policy, tokens=args.tokens, platform=meta["platform"])
  done = {}
  if args.resume and args.csv.exists():
    for r in load_csv(args.csv):
      if str(r.get("status", "")).startswith("ok"):
        done[tuple(r.get(key) for key in KEY_FIELDS)] = r
  records, flop_rate, start = [], None, time.monotonic()
  limit = meta.get("memory_limit")
  from tqdm import tqdm
  total = sum(len(specs_for(n, args.ks, common)) for n in args.ns)
  with tqdm(total=total, unit="model", disable=args.quiet) as bar:
    for n in args.ns:
      group = []
      for spec in specs_for(n, args.ks, common):
        spec["batch"] = batch_for(args.batch_policy, n, args.tokens)
        key = tuple(dict(spec, **extra, impl_requested=spec["impl"]).get(f) for f in KEY_FIELDS)
        bar.set_description(f"n={n} {spec['model']}" + (f" k={spec['k']}" if spec["k"] else ""))
        if key in done:
          group.append(done[key])
        elif args.time_budget and time.monotonic() - start > args.time_budget:
          rec = {f: spec.get(f) for f in ("model", "n", "k", "layers", "memory_layers", "dtype",
                                          "vocab", "batch")}
          group.append(dict(rec, **extra, impl_requested=spec["impl"],
                            status="not run (time budget; rerun with --resume)"))
        elif args.isolate:
          rec = measure_isolated(spec, limit, args.cell_time_limit, flop_rate, args.repeats,
                                 timeout=args.cell_time_limit * (args.repeats + 2) + 600)
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
      for r in group:
        r.pop("call", None), r.pop("times", None)
      records += group
      add_ratios(records)
      if on_update:
        on_update(records)
  return records


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description="Table 3: whole-model inference time and memory, Linformer vs Transformer.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--preset", choices=["auto", "cpu", "gpu"], default="auto",
                 help="defaults for the flags below; auto: gpu on GPUs/TPUs, cpu on CPUs")
  p.add_argument("--ns", type=ints, help="sequence lengths (rows)")
  p.add_argument("--max_n", type=int, help="drop ns above this")
  p.add_argument("--ks", type=ints, help="projected lengths (columns); only k < n is run")
  p.add_argument("--layers", type=int, help="encoder layers timed (the paper: 12)")
  p.add_argument("--memory_layers", type=int,
                 help="layers of the model whose compiled memory is reported (compiled only, "
                 "not run, when it differs from --layers)")
  p.add_argument("--batch_policy", choices=["tokens", "max_fit"], default="tokens")
  p.add_argument("--tokens", type=int, help="token budget per batch for --batch_policy tokens")
  p.add_argument("--max_batch", type=int, default=256, help="cap for --batch_policy max_fit")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
  p.add_argument("--impl", choices=["best", "xla", "cudnn", "default"], default="best",
                 help="jax.nn.dot_product_attention implementation; default: the project's "
                 "own call (no implementation argument)")
  p.add_argument("--vocab", type=int, default=1000)
  p.add_argument("--repeats", type=int)
  p.add_argument("--cell_time_limit", type=float, help="seconds per forward call")
  p.add_argument("--memory_limit_gib", type=float,
                 help="OOM threshold; default the device's limit (CPU: available RAM)")
  p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                 help="each model in its own subprocess (device peak memory per model)")
  p.add_argument("--time_budget", type=float,
                 help="seconds: start no new model after this (the rest is 'not run'); write "
                 "the outputs and exit, so that a rerun with --resume continues")
  p.add_argument("--resume", action="store_true",
                 help="reuse the 'ok' measurements of the same settings from the CSV")
  p.add_argument("--out_dir", type=Path, default=RESULTS)
  p.add_argument("--name", help="output name; default table3_<platform>")
  p.add_argument("--quiet", action="store_true")
  p.add_argument("--_worker", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args._worker:
    return args
  platform = jax.default_backend()
  preset = PRESETS[args.preset if args.preset != "auto" else
                   ("cpu" if platform == "cpu" else "gpu")]
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
  if args._worker:
    _worker(args._worker)
    return 0
  device = jax.devices()[0]
  impl = {"best": best_implementation(), "default": None}.get(args.impl, args.impl)
  limit = int(args.memory_limit_gib * GIB) if args.memory_limit_gib else memory_limit()
  meta = dict(platform=jax.default_backend(), device=device.device_kind, jax=jax.__version__,
              dtype=args.dtype, layers=args.layers, memory_layers=args.memory_layers,
              vocab=args.vocab, impl=impl,
              batch_policy=args.batch_policy, tokens=args.tokens, max_batch=args.max_batch,
              repeats=args.repeats, cell_time_limit=args.cell_time_limit, isolate=args.isolate,
              memory_limit=limit, ns=args.ns, ks=args.ks)
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
  memory = ("" if args.memory_layers == args.layers else
            f" (memory: {args.memory_layers} layers, compiled)")
  policy = (f"batch = {args.tokens} tokens // n" if args.batch_policy == "tokens" else
            "largest batch that fits")
  plot(records, args.png, f"Table 3 on {meta['platform']} ({meta['device']}): {args.layers} "
       f"layer(s) timed{memory}, {args.dtype}, {policy}, attention {impl}; "
       "dashed: the paper (V100, 12 layers)")
  print("\n" + text)
  print(f"wrote {args.md}, {args.csv}, {args.png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
