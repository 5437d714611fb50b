r"""Figure 3: validation perplexity against updates, one curve per run of a sweep.

  python -m linformer.analysis.curves --runs='runs/fig3a/*' --out=runs/fig3a.png
  python -m linformer.analysis.curves --runs='runs/uptrain/*' --out=up.png --recovery

Reads each run's metrics.jsonl (eval records) and config.json (for the legend), draws a PNG (log
scale when the values span more than 20x) and prints a markdown table of every run's final
validation perplexity; with --recovery, the uptraining table: perplexity before training, after
the freeze phase and at the end, MLM accuracy and wall time.
"""

from __future__ import annotations

import collections
import glob
import json
import os

from absl import app, flags

from linformer.cli import check_output_absl
from linformer.training.run_logs import read_metrics

FLAGS = flags.FLAGS  # defined under __main__: importing this module defines no flags


def label_of(workdir: str) -> str:
  """'Transformer' or 'Linformer k=.. (sharing)' with n (and causal) and the uptraining recipe
  (attention transfer, distillation), from the run's config."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  m = config["model"]
  causal = m.get("causal", False)
  if m["attention"] == "full":
    return f"{'causal ' if causal else ''}Transformer, n={m['max_len']}"
  if m["attention"] == "lsh":
    buckets = m.get("lsh_buckets") or 2 * m["max_len"] // m.get("lsh_chunk_len", 64)
    return (
      f"LSH (Reformer) n={m['max_len']}, {m.get('lsh_rounds', 4)} rounds, "
      f"chunk {m.get('lsh_chunk_len', 64)}, {buckets} buckets"
    )
  recipe = ""
  if config.get("transfer_steps"):
    recipe = f", transfer {config['transfer_steps']}"
  distill = config.get("distill") or {}
  if distill.get("alpha") or distill.get("beta"):
    recipe += f", distill a={distill.get('alpha', 0):g} b={distill.get('beta', 0):g}"
  k = "/".join(map(str, m["k"])) if isinstance(m["k"], list) else m["k"]
  sharing = "" if m["sharing"] == "none" else f", {m['sharing']}"
  init = m.get("projection_init", "normal")
  init = f", E/F init {init}" if init != "normal" else ""
  segments = f", causal c={m['segment_len']}" if causal else ""
  return f"Linformer n={m['max_len']}, k={k}{sharing}{init}{segments}{recipe}"


def labels_of(workdirs: list[str]) -> dict[str, str]:
  """`label_of` of each run, with what tells runs apart where they would share a label: the
  checkpoint they started from (`from <its directory's name>`), then the learning rate (a
  learning-rate comparison), then the workdir's name."""
  labels = {w: label_of(w) for w in workdirs}
  for attempt in ("init", "lr", "name"):
    counts = collections.Counter(labels.values())
    clashing = [w for w in workdirs if counts[labels[w]] > 1]
    if attempt == "init":
      sources = {w: _config(w).get("init_from") for w in clashing}
      if len(set(sources.values())) > 1:  # else it tells none of them apart
        for w in clashing:
          labels[w] += f", from {os.path.basename(os.path.normpath(sources[w] or 'scratch'))}"
      continue
    for w in clashing:
      if attempt == "lr":
        labels[w] += f", lr {_config(w)['optimizer']['lr']:g}"
      else:
        labels[w] += f" ({os.path.basename(os.path.normpath(w))})"
  return labels


def _config(workdir: str) -> dict:
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)


def curves(workdirs: list[str], metric: str = "perplexity") -> dict[str, tuple[list, list]]:
  out, labels = {}, labels_of(workdirs)
  for workdir in sorted(workdirs):
    records = read_metrics(workdir, "eval")
    if records:
      out[labels[workdir]] = ([r["step"] for r in records], [r[metric] for r in records])
  return out


def plot(data: dict, path: str, metric: str, title: str = "") -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for label, (steps, values) in data.items():
    ax.plot(
      steps,
      values,
      marker="o",
      markersize=3,
      linestyle="--" if label.startswith("Transformer") else "-",
      label=label,
    )
  values = [v for _, vs in data.values() for v in vs]
  if values and min(values) > 0 and max(values) / min(values) > 20:
    ax.set_yscale("log")
  ax.set_xlabel("updates")
  ax.set_ylabel(f"validation {metric}")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if len(data) > 4:  # below the axes, where it cannot cover a curve
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))
  else:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120, bbox_inches="tight")


def table(data: dict, metric: str) -> str:
  rows = [f"| run | steps | final validation {metric} |", "|---|---|---|"]
  rows += [
    f"| {label} | {steps[-1]} | {values[-1]:.1f} |" for label, (steps, values) in data.items()
  ]
  return "\n".join(rows)


def recovery_table(workdirs: list[str], at: int | None = None) -> str:
  """Uptraining runs: validation perplexity at step 0 (the converted model), at the end of the
  attention-transfer and freeze phases, after `at` steps past them (equal MLM steps for runs
  with and without transfer) and at the end; MLM accuracy at the end; each layer's
  attention-output error against the teacher after transfer (runs with a teacher); train time,
  the seconds of every logged window of train and transfer steps (compiling included,
  evaluations not), which a resumed run adds up across its starts."""
  middle = f" ppl at {at} MLM steps |" if at else ""
  rows = [
    f"| run | ppl step 0 | ppl after transfer / freeze (step) |{middle} last ppl (step) "
    "| last MLM acc | attention error after transfer (per layer) | train time |",
    "|---|---|---|" + ("---|" if at else "") + "---|---|---|---|",
  ]
  labels = labels_of(workdirs)
  for workdir in sorted(workdirs):
    records = {r["step"]: r for r in read_metrics(workdir, "eval")}
    if not records:
      continue
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
    start = config.get("transfer_steps", 0) + config.get("freeze_pretrained_steps", 0)
    last = records[max(records)]
    steps = read_metrics(workdir, "train") + read_metrics(workdir, "transfer")
    minutes = sum(r.get("seconds", 0.0) for r in steps) / 60
    cell = lambda r: f"{r['perplexity']:.1f}" if r else "—"
    extra = f" {cell(records.get(start + at))} |" if at else ""
    error = "—"
    transferred = records.get(config.get("transfer_steps", 0)) or {}
    layers = sorted((k for k in transferred if k.startswith("attention_error/layer")), key=len)
    if config.get("transfer_steps") and layers:
      first = records.get(0, {}).get("attention_error")
      error = f"{transferred['attention_error']:.3f}" + (f" (from {first:.3f})" if first else "")
      error += ": " + " / ".join(f"{transferred[k]:.2f}" for k in layers)
    rows.append(
      f"| {labels[workdir]} | {cell(records.get(0))} | {cell(records.get(start))} ({start}) |"
      f"{extra} {last['perplexity']:.1f} ({max(records)}) | {last['accuracy']:.3f} | {error} | "
      f"{minutes:.1f} min |"
    )
  return "\n".join(rows)


def main(argv):
  del argv
  workdirs = [d for d in glob.glob(FLAGS.runs) if os.path.isdir(d)]
  if FLAGS.out:
    check_output_absl("--out", FLAGS.out, {"--runs": workdirs})
  data = curves(workdirs, FLAGS.metric)
  if not data:
    raise app.UsageError(f"No run with eval metrics matches --runs={FLAGS.runs!r}.")
  if FLAGS.out:
    plot(data, FLAGS.out, FLAGS.metric, FLAGS.title)
    print(f"wrote {FLAGS.out}")
  print(recovery_table(workdirs, FLAGS.at) if FLAGS.recovery else table(data, FLAGS.metric))


if __name__ == "__main__":
  flags.DEFINE_string("runs", None, "Glob of run directories (quote it).")
  flags.DEFINE_string("out", None, "PNG to write.")
  flags.DEFINE_string("metric", "perplexity", "Eval metric to plot.")
  flags.DEFINE_string("title", "", "Plot title.")
  flags.DEFINE_bool("recovery", False, "Print the uptraining recovery table instead.")
  flags.DEFINE_integer("at", None, "With --recovery: also the perplexity at this step.")
  flags.mark_flags_as_required(["runs"])
  app.run(main)
