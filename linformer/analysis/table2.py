r"""Table 2: fine-tuning results of a sweep, best over the grid, beside the paper's numbers.

  python -m linformer.analysis.table2 --runs='runs/table2/*/*'
  python -m linformer.analysis.table2 --runs='runs/table2/*' --per_run   # one row per run

Each run is a fine-tuning workdir (results.json, config.json). Runs are grouped by model (n,
attention, k, sharing) and dataset; a cell is the best main accuracy over the runs of its group
(the learning-rate x batch grid), as RoBERTa reports. QQP is scored by accuracy, as in the paper.

`--per_run` lists each run instead: its model, budget (steps x batch, train and eval examples),
training wall time (summed from metrics.jsonl), its last and best accuracy, and the paper's
number for the same k / n ratio and sharing at n = 512 (a run at n = 128, k = 32 is set beside
the paper's k = 128).
"""

from __future__ import annotations

import glob
import json
import os

from absl import app, flags

from linformer.cli import check_output_absl
from linformer.training.run_logs import read_metrics

FLAGS = flags.FLAGS  # defined under __main__: importing this module defines no flags

DATASETS = ("sst2", "imdb", "qnli", "qqp")
HEADER = ("SST-2", "IMDB", "QNLI", "QQP")
SPLIT = {"imdb": "test"}  # IMDB has no validation split; the paper reports test
# The paper's Table 2, keyed like `model_key`.
PAPER = {
  (512, "RoBERTa-base"): (93.1, 94.1, 90.9, 90.9),
  (512, "k=128"): (92.4, 94.0, 90.4, 90.2),
  (512, "k=128, shared kv"): (93.4, 93.4, 90.3, 90.3),
  (512, "k=128, shared kv, layer"): (93.2, 93.8, 90.1, 90.2),
  (512, "k=256"): (93.2, 94.0, 90.6, 90.5),
  (512, "k=256, shared kv"): (93.3, 93.6, 90.6, 90.6),
  (512, "k=256, shared kv, layer"): (93.1, 94.1, 91.2, 90.8),
  (1024, "k=256"): (93.0, 93.8, 90.4, 90.4),
  (1024, "k=256, shared kv"): (93.0, 93.6, 90.3, 90.4),
  (1024, "k=256, shared kv, layer"): (93.2, 94.2, 90.8, 90.5),
}
SHARING = {
  "none": "",
  "headwise": ", headwise",
  "kv": ", shared kv",
  "layerwise": ", shared kv, layer",
}


def model_key(model: dict) -> tuple[int, str]:
  if model["attention"] == "full":
    return model["max_len"], "RoBERTa-base"
  return model["max_len"], f"k={model['k']}{SHARING[model['sharing']]}"


def collect(workdirs: list[str]) -> dict[tuple[int, str], dict[str, float]]:
  """(n, model) -> dataset -> best accuracy (%) over the runs."""
  table: dict = {}
  for workdir in workdirs:
    paths = [os.path.join(workdir, f) for f in ("config.json", "results.json")]
    if not all(os.path.exists(p) for p in paths):
      continue
    with open(paths[0]) as f:
      config = json.load(f)
    with open(paths[1]) as f:
      results = json.load(f)
    # Runs made before the rename, or with the deprecated --config.data.task, name it `task`.
    dataset = config["data"].get("task") or config["data"].get("dataset")
    if dataset not in DATASETS:
      continue
    metric = f"{SPLIT.get(dataset, 'validation')}/accuracy"
    scores = [e[metric] for e in results["evaluations"] if metric in e]
    if scores:
      cell = table.setdefault(model_key(config["model"]), {})
      cell[dataset] = max(cell.get(dataset, 0.0), 100 * max(scores))
  return table


def markdown(table: dict) -> str:
  rows = [
    "| n | model | " + " | ".join(f"{h} (ours / paper)" for h in HEADER) + " |",
    "|---|---|" + "---|" * len(DATASETS),
  ]
  for n, name in sorted(set(table) | set(PAPER)):
    ours = table.get((n, name), {})
    paper = PAPER.get((n, name))
    cells = []
    for i, dataset in enumerate(DATASETS):
      mine = f"{ours[dataset]:.1f}" if dataset in ours else "-"
      cells.append(f"{mine} / {paper[i] if paper else '-'}")
    rows.append(f"| {n} | {name} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def paper_number(model: dict, dataset: str) -> float | None:
  """The paper's accuracy for the same k / n and sharing at n = 512 (None if it has no row)."""
  if dataset not in DATASETS:
    return None
  if model["attention"] == "full":
    key = (512, "RoBERTa-base")
  else:
    k = model["k"] if isinstance(model["k"], int) else None
    if k is None or (512 * k) % model["max_len"]:
      return None
    key = (512, f"k={512 * k // model['max_len']}{SHARING[model['sharing']]}")
  row = PAPER.get(key)
  return row[DATASETS.index(dataset)] if row else None


def run_row(workdir: str) -> dict | None:
  """One run's model, budget, time and accuracy; None for a directory that is not a finished
  fine-tuning run."""
  paths = {f: os.path.join(workdir, f"{f}.json") for f in ("config", "results")}
  if not all(os.path.exists(p) for p in paths.values()):
    return None
  with open(paths["config"]) as f:
    config = json.load(f)
  with open(paths["results"]) as f:
    results = json.load(f)
  if config.get("task") != "finetune" or not results.get("evaluations"):
    return None
  records = read_metrics(workdir)
  seconds = sum(r.get("seconds", 0.0) for r in records if r.get("kind") == "train")
  model, data = config["model"], config["data"]
  dataset = data.get("task") or data.get("dataset")
  metric = results["main_metric"]
  last = results["evaluations"][-1]
  steps = last["step"]
  return {
    "run": os.path.basename(os.path.normpath(workdir)),
    "dataset": dataset,
    "model": "full attention"
    if model["attention"] == "full"
    else f"Linformer k={model['k']}, sharing {model['sharing']}",
    "n": model["max_len"],
    "steps": steps,
    "batch": config["batch_size"],
    "train_examples": data.get("train_examples") or "all",
    "eval_examples": data.get("eval_examples") or "all",
    "metric": metric,
    "last": 100 * last[metric],
    "best": 100 * results["best"][metric],
    "minutes": seconds / 60,
    "paper": paper_number(model, dataset),
  }


def per_run_markdown(rows: list[dict]) -> str:
  lines = [
    "| dataset | model | n | steps x batch | train examples | eval examples | train time "
    "| accuracy (last / best) | paper |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in sorted(
    rows, key=lambda r: (r["dataset"], r["n"], r["model"] != "full attention", r["run"])
  ):
    paper = "-" if r["paper"] is None else f"{r['paper']}"
    minutes = f"{r['minutes']:.0f} min" if r["minutes"] else "-"  # runs before `seconds` was logged
    lines.append(
      f"| {r['dataset']} | {r['model']} | {r['n']} | {r['steps']} x {r['batch']} | "
      f"{r['train_examples']} | {r['eval_examples']} ({r['metric'].split('/')[0]}) | "
      f"{minutes} | {r['last']:.1f} / {r['best']:.1f} | {paper} |"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  workdirs = sorted(d for d in glob.glob(FLAGS.runs) if os.path.isdir(d))
  if FLAGS.per_run:
    text = per_run_markdown([r for r in map(run_row, workdirs) if r])
  else:
    text = markdown(collect(workdirs))
  if FLAGS.out:
    check_output_absl("--out", FLAGS.out, {"--runs": workdirs})
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  flags.DEFINE_string("runs", None, "Glob of fine-tuning run directories (quote it).")
  flags.DEFINE_string("out", None, "Markdown file to write (also printed).")
  flags.DEFINE_bool("per_run", False, "One row per run (model, budget, time, accuracy).")
  flags.mark_flags_as_required(["runs"])
  app.run(main)
