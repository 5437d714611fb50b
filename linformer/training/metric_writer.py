"""Metrics to metrics.jsonl and TensorBoard (tensorboardX, no TensorFlow), from process 0 only."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import jax


class MetricWriter:
  """Appends one JSON line per (step, kind) and mirrors scalars to TensorBoard.

  Other processes get a writer that does nothing, so callers need no `if process_index == 0`.
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active:
      from tensorboardX import SummaryWriter  # imported lazily: it is slow to import.
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, kind: str, metrics: Mapping[str, float]) -> None:
    if not self.active:
      return
    clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v)))
             for k, v in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), "kind": kind, **clean}) + "\n")
    for name, value in metrics.items():
      self._tb.add_scalar(f"{kind}/{name}", float(value), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str, kind: str | None = None) -> list[dict]:
  """The records of a run's metrics.jsonl, optionally of one kind (train, eval, ...)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if kind is None or r["kind"] == kind]
