r"""Measuring a compiled call: timing, compiled memory, OOM, and the benchmarks' CSV formatting.

One library for the benchmarks (`benchmarks/table3.py`, `attention.py`, `train_throughput.py`),
so that "peak memory" and "OOM" mean one thing (model FLOPs and peak FLOP/s: `flops.py`).

Compiled memory. XLA's memory analysis of a compiled call: argument bytes (parameters, inputs),
output bytes, temp bytes (the intermediates, already packed by liveness, so their peak) and alias
bytes (outputs written into donated arguments). The peak is

    peak = argument + output + temp - alias

because an output aliasing a donated argument is the same buffer, counted once. For a call that
donates nothing (an inference forward) alias is 0 and the peak is the plain sum; for a train
step that donates its state, not subtracting would count the state twice.
"""

from __future__ import annotations

import csv
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
from flax import nnx

MIB = 2**20
GIB = 2**30

# ---------------------------------------------------------------------------------------------
# Formatting and CSV.


def ints(text: str) -> list[int]:
  """'512,1024' -> [512, 1024] (an argparse type)."""
  return [int(v) for v in text.split(",") if v]


def fmt(value, spec: str, missing: str = "—", suffix: str = "") -> str:
  return missing if value is None else format(value, spec) + suffix


def ratio(a, b):
  """a / b, or None when either is missing (or b is 0)."""
  return a / b if a is not None and b else None


def write_report(text: str, path: Path) -> Path:
  """A benchmark's markdown report: printed, and written to `path`."""
  print("\n" + text)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  print(f"wrote {path}")
  return path


def write_csv(rows: list[dict], path: Path) -> None:
  """Written whole to a temporary file, then renamed: never a half file."""
  path = Path(path)
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
# Compiling, timing.


def compile_forward(module: nnx.Module, inputs: tuple):
  """The module's deterministic forward, jit-compiled for these inputs: (compiled, state).
  Call as `compiled(state, *inputs)`."""
  graphdef, state = nnx.split(module)
  forward = lambda state, *xs: nnx.merge(graphdef, state)(*xs, deterministic=True)
  return jax.jit(forward).lower(state, *inputs).compile(), state


def timed_call(fn: Callable, *args) -> Callable[[], float]:
  """A function running `fn(*args)` to completion and returning its wall time in seconds."""

  def call():
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start

  return call


def time_interleaved(group: list[dict], repeats: int) -> None:
  """Times a group of cells round-robin, so that load from other processes on a shared machine
  slows them alike.

  A cell is a dict; those with a `call` (no arguments, returns its seconds) are timed `repeats`
  times into their `times` list; then `call` is dropped and `median_s` set. A call that raises
  stops that cell only: its `status` becomes `failure_status(error)` ('OOM: ...' or 'error: ...').
  """
  for r in group:
    if "call" in r:
      r.setdefault("times", [])
  for _ in range(repeats):
    for r in group:
      if "call" not in r:
        continue
      try:
        r["times"].append(r["call"]())
      except Exception as e:  # noqa: BLE001 -- one failing cell does not stop the others
        r.pop("call")
        r["status"] = failure_status(e)
  for r in group:
    if r.pop("call", None) and r["times"]:
      r["median_s"] = statistics.median(r["times"])


# ---------------------------------------------------------------------------------------------
# Memory and OOM.


def memory_limit() -> int | None:
  """Bytes a computation may use: the device's allocator limit, on CPU the available RAM."""
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return stats["bytes_limit"]
  if jax.default_backend() == "cpu":
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  return None


def compiled_memory(compiled) -> dict[str, int]:
  """XLA's memory analysis: temp, argument, output, alias bytes and the one definition of peak,
  argument + output + temp - alias (see the module docstring)."""
  mem = compiled.memory_analysis()
  out = dict(
    temp=mem.temp_size_in_bytes,
    argument=mem.argument_size_in_bytes,
    output=mem.output_size_in_bytes,
    alias=mem.alias_size_in_bytes,
  )
  out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def compiled_flops(compiled) -> float | None:
  """XLA's FLOP estimate of a compiled call (every op, elementwise ones included); None when the
  backend has none."""
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    return flops if flops > 0 else None
  except Exception:  # noqa: BLE001 -- an estimate only; some backends have none
    return None


def is_oom(error: BaseException) -> bool:
  """Whether an error means out of memory: Python's MemoryError, XLA's RESOURCE_EXHAUSTED, or an
  allocator's 'out of memory' message (GPU, host)."""
  text = str(error)
  return (
    isinstance(error, MemoryError)
    or "RESOURCE_EXHAUSTED" in text
    or "out of memory" in text.lower()
  )


def failure_status(error: BaseException, limit: int = 200) -> str:
  """'OOM: <type>: <first line>' or 'error: <type>: <first line>', for a results table."""
  lines = str(error).splitlines()
  return ("OOM" if is_oom(error) else "error") + (
    f": {type(error).__name__}: {lines[0][:limit] if lines else ''}"
  )


def over_limit(peak: int, limit: int | None) -> str | None:
  """The OOM status of a compiled peak over the memory limit (checked before running), or None
  when it fits."""
  if limit is None or peak <= limit:
    return None
  return f"OOM (compiled {peak / GIB:.2f} GiB > {limit / GIB:.2f} GiB)"
