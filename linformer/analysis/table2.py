r"""Table 2: fine-tuning results of a sweep, best over the grid, beside the paper's numbers.

  python -m linformer.analysis.table2 --runs='runs/table2/*/*'

Each run is a fine-tuning workdir (results.json, config.json). Runs are grouped by model (n,
attention, k, sharing) and dataset; a cell is the best main accuracy over the runs of its group
(the learning-rate x batch grid), as RoBERTa reports. QQP is scored by accuracy, as in the paper.
"""

from __future__ import annotations

import glob
import json
import os

from absl import app, flags

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


def main(argv):
  del argv
  text = markdown(collect([d for d in glob.glob(FLAGS.runs) if os.path.isdir(d)]))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  flags.DEFINE_string("runs", None, "Glob of fine-tuning run directories (quote it).")
  flags.DEFINE_string("out", None, "Markdown file to write (also printed).")
  flags.mark_flags_as_required(["runs"])
  app.run(main)
