"""The paper's Table 3, measured: one model's inference time and compiled memory, and the sweep.

The CLI, its presets and the method (what runs, what is measured) are in `benchmarks/table3.py`;
timing, compiled memory and OOM detection come from `linformer.measure`; the paper's values, the
ratios, the tables, the plot and reading a CSV back are `linformer.analysis.table3_report`. A record
is one model (Transformer, Linformer at one n, k, or LSH attention at one n, number of rounds and
chunk length): its settings, `status`, time and compiled memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from linformer.config import ModelConfig
from linformer.measure import (
  compile_forward,
  compiled_flops,
  compiled_memory,
  failure_status,
  is_oom,
  over_limit,
  time_interleaved,
  timed_call,
)
from linformer.model import Encoder

# ---------------------------------------------------------------------------------------------
# Choosing jax.nn.dot_product_attention's implementation, for this benchmark's traces only.


def best_implementation(backend: str | None = None) -> str:
  """cuDNN flash attention on NVIDIA GPUs, XLA elsewhere."""
  backend = backend or jax.default_backend()
  kind = jax.devices()[0].device_kind.lower() if backend == "gpu" else ""
  return "cudnn" if backend in ("gpu", "cuda") and "amd" not in kind else "xla"


# ---------------------------------------------------------------------------------------------
# One model measurement.


def encoder_config(
  attention: str,
  n: int,
  k: int | None,
  *,
  layers: int = 12,
  dtype: str = "float32",
  vocab: int = 1000,
  sharing: str = "layerwise",
  projection: str = "learned",
  impl: str | None = None,
  rounds: int | None = None,
  chunk: int | None = None,
) -> ModelConfig:
  """RoBERTa-base widths, dropout off; k is ignored for full and LSH attention, rounds and chunk
  (LSH's hash rounds and chunk length, at most n; the paper's 2 n / chunk buckets) for the
  others. LSH attention runs its own einsums: `impl` does not apply to it."""
  lsh = {}
  if attention == "lsh":
    lsh = dict(lsh_rounds=rounds or 4, lsh_chunk_len=min(chunk or 64, n))
  return ModelConfig(
    vocab_size=vocab,
    max_len=n,
    num_layers=layers,
    attention=attention,
    k=k or 128 if attention == "linformer" else min(128, n),
    sharing=sharing,
    projection=projection,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    dtype=dtype,
    attention_impl=None if attention == "lsh" else impl,
    **lsh,
  )


def build_encoder(cfg: ModelConfig, batch: int, abstract: bool = False):
  """The Encoder (parameters initialised by one jitted call; shapes only when `abstract`, enough
  to compile) and its inputs (ids, mask)."""
  make = lambda: Encoder(cfg, rngs=nnx.Rngs(0))
  shape = (batch, cfg.max_len)
  if abstract:
    return nnx.eval_shape(make), (
      jax.ShapeDtypeStruct(shape, jnp.int32),
      jax.ShapeDtypeStruct(shape, jnp.bool_),
    )
  ids = jax.random.randint(jax.random.key(1), shape, 0, cfg.vocab_size)
  return nnx.jit(make)(), (ids, jnp.ones(shape, bool))


def _compile_model(
  spec: dict, batch: int, impl: str, layers: int | None = None, abstract: bool = False
):
  cfg = encoder_config(
    spec["model"],
    spec["n"],
    spec["k"],
    layers=layers or spec["layers"],
    dtype=spec["dtype"],
    vocab=spec["vocab"],
    impl=impl,
    rounds=spec.get("rounds"),
    chunk=spec.get("chunk"),
  )
  model, inputs = build_encoder(cfg, batch, abstract)
  compiled, state = compile_forward(model, inputs)
  return compiled, state, inputs


def compile_cell(spec: dict, batch: int) -> dict:
  """Compiles one model at one batch with the requested implementation, falling back to XLA when
  cuDNN attention does not compile: {compiled, state, inputs, impl, note}. LSH attention (and
  impl None) is the project's einsums: no fallback."""
  impl, note = spec["impl"], ""
  try:
    compiled, state, inputs = _compile_model(spec, batch, impl)
  except Exception as e:  # noqa: BLE001
    if impl in (None, "xla") or spec["model"] == "lsh" or is_oom(e):
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


def prepare(
  spec: dict, limit: int | None, time_limit: float | None, flop_rate: float | None
) -> dict:
  """Compiles one model (spec: model, n, k, layers, dtype, vocab, impl, batch or max_batch; LSH:
  rounds, chunk), checks its memory and predicted time, runs its warm-up call; returns its
  record, with a timed `call` when it is to be timed."""
  rec = {key: spec[key] for key in ("model", "n", "k", "layers", "dtype", "vocab")}
  rec.update(rounds=spec.get("rounds"), chunk=spec.get("chunk"))
  rec.update(
    memory_layers=spec.get("memory_layers") or spec["layers"],
    impl_requested=spec["impl"],
    batch=spec.get("batch"),
    status="ok",
  )
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
    shown = (
      mem
      if memory_layers == spec["layers"]
      else compiled_memory(
        _compile_model(spec, rec["batch"], cell["impl"], memory_layers, abstract=True)[0]
      )
    )
    rec.update(
      temp_bytes=shown["temp"],
      argument_bytes=shown["argument"],
      output_bytes=shown["output"],
      peak_bytes=shown["peak"],
    )
    if oom := over_limit(mem["peak"], limit):
      rec["status"] = oom
      return rec
    if time_limit is not None and flops and flop_rate and flops / flop_rate > time_limit:
      rec["status"] = (
        f"skipped (time): predicted {flops / flop_rate:.0f} s per call > {time_limit:.0f} s"
      )
      return rec
    call = timed_call(compiled, cell["state"], *cell["inputs"])
    warmup = call()
    rec["warmup_s"] = warmup
    if time_limit is not None and warmup > time_limit:
      rec["status"] = f"skipped (time): warm-up call {warmup:.0f} s > {time_limit:.0f} s"
      return rec
    rec.update(call=call, times=[])
  except Exception as e:  # noqa: BLE001 -- a failing cell is reported, the sweep goes on
    rec["status"] = failure_status(e)
  return rec


def finish(records: list[dict], repeats: int, device_peak: bool = False) -> None:
  """Times the prepared records round-robin; adds ms, ms per sequence, the FLOP rate and, with
  `device_peak` (one model in a fresh process), the device's peak bytes in use."""
  time_interleaved(records, repeats)
  stats = jax.devices()[0].memory_stats() or {}
  for r in records:
    if r.get("median_s") is not None:
      r["ms"] = 1e3 * r.pop("median_s")
    times = r.pop("times", None)
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
  payload = json.dumps(
    dict(spec=spec, limit=limit, time_limit=time_limit, flop_rate=flop_rate, repeats=repeats)
  )
  # `-c` puts the working directory on sys.path: run from the folder holding the package, so
  # the worker imports this very `linformer`, installed or not.
  root = Path(__file__).resolve().parents[2]
  code = "import sys; from linformer.analysis.table3 import worker; worker(sys.argv[1])"
  try:
    proc = subprocess.run(
      [sys.executable, "-c", code, payload],
      capture_output=True,
      text=True,
      timeout=timeout,
      cwd=root,
    )
  except subprocess.TimeoutExpired:
    rec = {key: spec.get(key) for key in RECORD_FIELDS}
    rec.update(
      impl_requested=spec["impl"],
      batch=spec.get("batch"),
      status=f"skipped (time): subprocess over {timeout:.0f} s",
    )
    return rec
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode or not lines:
    rec = {key: spec.get(key) for key in RECORD_FIELDS}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    rec.update(
      impl_requested=spec["impl"],
      batch=spec.get("batch"),
      status=("OOM" if is_oom(RuntimeError(proc.stderr)) else "error")
      + f": subprocess exit {proc.returncode}: {tail}",
    )
    return rec
  return json.loads(lines[-1])


def worker(payload: str) -> None:
  """The subprocess of `measure_isolated`: prints the measured record as JSON."""
  args = json.loads(payload)
  rec = prepare(args["spec"], args["limit"], args["time_limit"], args["flop_rate"])
  finish([rec], args["repeats"], device_peak=True)
  print(json.dumps(rec))


# ---------------------------------------------------------------------------------------------
# The sweep: which models are measured, and the fields that identify a measurement.

# What a record copies from its spec when the model could not be measured in a subprocess.
RECORD_FIELDS = ("model", "n", "k", "rounds", "chunk", "layers", "dtype", "vocab")

KEY_FIELDS = (
  "model",
  "n",
  "k",
  "rounds",
  "chunk",
  "layers",
  "memory_layers",
  "dtype",
  "vocab",
  "impl_requested",
  "batch_policy",
  "tokens",
)


def specs_for(
  n: int, ks: Iterable[int], common: dict, lsh_rounds: Iterable[int] = (), lsh_chunk: int = 64
) -> list[dict]:
  """The Transformer at n, the Linformer at every k < n (the paper's cells), then LSH attention
  (Reformer) with each number of rounds, chunks of lsh_chunk (its own einsums: impl None)."""
  out = [dict(common, model="full", n=n, k=None)]
  out += [dict(common, model="linformer", n=n, k=k) for k in ks if k < n]
  out += [
    dict(common, model="lsh", n=n, k=None, rounds=r, chunk=min(lsh_chunk, n), impl=None)
    for r in lsh_rounds
  ]
  return out


def batch_for(policy: str, n: int, tokens: int) -> int | None:
  """The batch of the `tokens` policy; None for `max_fit` (found per model)."""
  return max(1, tokens // n) if policy == "tokens" else None
