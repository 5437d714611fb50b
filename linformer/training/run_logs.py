"""A run's logs, written by process 0 only: metrics.jsonl and TensorBoard (tensorboardX, no
TensorFlow), and results.json (every evaluation and the best by the main metric)."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping

import jax


class MetricWriter:
  """Appends one JSON line per (step, kind) and mirrors scalars to TensorBoard.

  metrics.jsonl is the record; TensorBoard's event files are rebuilt from it at every start, so
  after a kill and a resume (`trim_logs` first) they too hold each step once, in order.
  Other processes get a writer that does nothing, so callers need no `if process_index == 0`.
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active:
      from tensorboardX import SummaryWriter  # imported lazily: it is slow to import.

      os.makedirs(workdir, exist_ok=True)
      directory = os.path.join(workdir, "tensorboard")
      shutil.rmtree(directory, ignore_errors=True)
      self._tb = SummaryWriter(directory)
      for record in read_metrics(workdir):
        self._scalars(record["step"], record["kind"], record)
      self._tb.flush()

  def _scalars(self, step: int, kind: str, metrics: Mapping) -> None:
    for name, value in metrics.items():
      if name not in ("step", "kind"):
        self._tb.add_scalar(f"{kind}/{name}", float(value), int(step))

  def write(self, step: int, kind: str, metrics: Mapping[str, float]) -> None:
    if not self.active:
      return
    clean = {
      k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()
    }
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), "kind": kind, **clean}) + "\n")
    self._scalars(step, kind, metrics)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str, kind: str | None = None) -> list[dict]:
  """The records of a run's metrics.jsonl, optionally of one kind (train, eval, ...). A torn
  last line (a kill mid-write) is dropped; any other unreadable line is skipped with a warning."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  from absl import logging

  with open(path, errors="replace") as f:
    lines = [line for line in f if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or "step" not in record or "kind" not in record:
        raise ValueError("not a metrics record")
    except ValueError:
      if i < len(lines) - 1:  # the last line is torn by a kill mid-write: dropped silently
        logging.warning("%s: line %d is not a metrics record; skipped.", path, i + 1)
      continue
    records.append(record)
  return [r for r in records if kind is None or r["kind"] == kind]


def trim_logs(workdir: str, step: int) -> None:
  """Drops metrics.jsonl and results.json records past `step` (the checkpoint a run resumes
  from; -1 for a fresh start), so that a rerun after a crash logs each step once."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    kept = [r for r in read_metrics(workdir) if r["step"] <= step]
    with open(path + ".tmp", "w") as f:  # replaced whole: a kill leaves the old or the new file
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(path + ".tmp", path)
  if not os.path.exists(os.path.join(workdir, RESULTS_FILE)):
    return
  results = read_results(workdir)
  results["evaluations"] = [r for r in results["evaluations"] if r["step"] <= step]
  if results.get("best") and results["best"]["step"] > step:
    results["best"] = None
  _write_results(workdir, results)


RESULTS_FILE = "results.json"


def read_results(workdir: str) -> dict:
  path = os.path.join(workdir, RESULTS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"main_metric": None, "best": None, "evaluations": []}


def _write_results(workdir: str, results: dict) -> None:
  if jax.process_index() == 0:
    tmp = os.path.join(workdir, RESULTS_FILE + ".tmp")
    with open(tmp, "w") as f:
      json.dump(results, f, indent=2)
    os.replace(tmp, os.path.join(workdir, RESULTS_FILE))


def record_eval(workdir: str, step: int, metrics: dict, main_metric: str | None) -> bool:
  """Adds an evaluation to results.json; True if it is the best so far by the main metric."""
  results = read_results(workdir)
  results["main_metric"] = main_metric
  results["evaluations"].append({"step": step, **metrics})
  value = metrics.get(main_metric) if main_metric else None
  best = results.get("best")
  improved = (
    value is not None and math.isfinite(value) and (best is None or value > best[main_metric])
  )
  if improved:
    results["best"] = {"step": step, **metrics}
  _write_results(workdir, results)
  return improved
