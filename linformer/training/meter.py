"""Training metrics between the device and the logs: fetched in batches, checked for divergence,
summarised with throughput and model FLOPs utilisation."""

from __future__ import annotations

import time

import jax
import numpy as np

from linformer import flops


class TrainingDiverged(RuntimeError):
  """The loss, the gradient or the parameters became NaN or infinite."""


class TrainMeter:
  """Per-step device metrics, fetched to host only at log and checkpoint time (no per-step sync).

  The train step computes a `finite` flag on the device and keeps its previous state when a step
  is not finite, so a diverged state never exists, let alone gets saved; the first fetch after it
  names the step. The steps' model FLOPs over the time and `peak` is the model FLOPs utilisation
  (`mfu`).
  """

  def __init__(self, task, peak: float = 0.0):
    self.task, self.pending, self.tokens, self.flops, self.start = task, [], 0, 0.0, time.time()
    self.peak = peak

  def add(self, metrics, tokens: int, flops: float = 0.0):
    self.pending.append(metrics)
    self.tokens += tokens
    self.flops += flops

  def check(self, step: int, last_good: int | None) -> list[dict]:
    """Fetches the pending metrics; raises at the first step that was not finite."""
    fetched = jax.device_get(self.pending)
    first = step - len(fetched) + 1
    for i, m in enumerate(fetched):
      if not m.get("finite", True) or not all(
        np.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")
      ):
        kept = (
          f"The last good checkpoint (step {last_good}) was kept; the next start resumes from it."
          if last_good is not None
          else "No checkpoint had been written yet: the next start begins again from step 0."
        )
        raise TrainingDiverged(
          f"Training diverged at step {first + i}: loss {m['loss']}, gradient norm "
          f"{m['grad_norm']}, parameter norm {m['param_norm']}. {kept} Fix: lower "
          "config.optimizer.lr, raise config.optimizer.warmup_steps, or compute in float32 "
          "(config.model.dtype)."
        )
    return fetched

  def flush(self, step: int, last_good: int | None) -> dict[str, float]:
    fetched = self.check(step, last_good)
    summary = self.task.summarize(fetched)
    elapsed = max(time.time() - self.start, 1e-9)
    summary.update(
      grad_norm=float(np.mean([m["grad_norm"] for m in fetched])),
      param_norm=float(fetched[-1]["param_norm"]),
      lr=float(fetched[-1]["lr"]),
      tokens_per_sec=self.tokens / elapsed,
      seconds=elapsed,  # wall time since the last record (evaluations between included)
    )
    if self.peak:
      summary["mfu"] = self.flops / elapsed / self.peak
    self.pending, self.tokens, self.flops, self.start = [], 0, 0.0, time.time()
    return summary


def peak_flops(config, mesh) -> float:
  """The mesh's peak FLOP/s for MFU: `config.peak_flops` (per device) if set, else the
  datasheet peak of the devices at the compute dtype (linformer.flops), else a matmul rate
  measured once; on a CPU that rate is the host's, however many devices it is split into."""
  devices = list(mesh.devices.flat)
  if config.get("peak_flops"):
    return float(config.peak_flops) * len(devices)
  rate, source = flops.peak_flops(config.model.dtype, devices)
  per_host = source == "measured matmul rate" and devices[0].platform == "cpu"
  return rate if per_host else rate * len(devices)
