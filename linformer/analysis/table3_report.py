"""The paper's Table 3, reported: the paper's values, the ratios, the markdown tables and the plot.

The records are those of `linformer.analysis.table3` (one per model: Transformer, Linformer at
one n, k, or LSH attention at one n and number of rounds), measured or read back from a previous
run's CSV (`load_csv`). `add_ratios` adds, on the Linformer and LSH records, the speed-up and memory
saved against the Transformer at the same n, beside the paper's for Linformer; `markdown` and
`plot` make the table3_<platform>.md and .png of `benchmarks/table3.py`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from linformer.measure import GIB, MIB, fmt, ratio

# ---------------------------------------------------------------------------------------------
# The paper's Table 3 (one 16 GB V100, layerwise sharing, largest batch that fits).

PAPER_NS = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
PAPER_KS = (128, 256, 512, 1024, 2048)
_PAPER_SPEEDUP = (
  (1.5, 1.3),
  (1.7, 1.6, 1.3),
  (2.6, 2.4, 2.1, 1.3),
  (3.4, 3.2, 2.8, 2.2, 1.3),
  (5.5, 5.0, 4.4, 3.5, 2.1),
  (8.6, 7.8, 7.0, 5.6, 3.3),
  (13, 12, 11, 8.8, 5.0),
  (20, 18, 16, 14, 7.9),
)
_PAPER_MEMORY = (
  (1.7, 1.5),
  (3.0, 2.9, 1.8),
  (6.1, 5.6, 3.6, 2.0),
  (14, 13, 8.3, 4.3, 2.3),
  (28, 26, 17, 8.5, 4.5),
  (56, 48, 32, 16, 8),
  (56, 48, 36, 18, 16),
  (60, 52, 40, 20, 18),
)
PAPER_SPEEDUP = {
  (n, k): v for n, row in zip(PAPER_NS, _PAPER_SPEEDUP) for k, v in zip(PAPER_KS, row)
}
PAPER_MEMORY = {(n, k): v for n, row in zip(PAPER_NS, _PAPER_MEMORY) for k, v in zip(PAPER_KS, row)}

# ---------------------------------------------------------------------------------------------
# The ratios, the tables, the plot.


def add_ratios(records: list[dict]) -> list[dict]:
  """Adds, on every Linformer and LSH record, the speed-up and memory saved against the
  Transformer at the same n (per sequence), and the paper's values (Linformer's cells only)."""
  full = {r["n"]: r for r in records if r["model"] == "full"}
  for r in records:
    if r["model"] not in ("linformer", "lsh"):
      continue
    f = full.get(r["n"], {})
    per_seq = lambda rec, key: (
      rec[key] / rec["batch"] if rec.get(key) is not None and rec.get("batch") else None
    )
    r["speedup"] = ratio(f.get("ms_per_seq"), r.get("ms_per_seq"))
    ok = lambda rec: str(rec.get("status", "")).startswith("ok")
    r["memory_saved"] = (
      ratio(per_seq(f, "peak_bytes"), per_seq(r, "peak_bytes")) if ok(f) and ok(r) else None
    )
    r["temp_ratio"] = (
      ratio(per_seq(f, "temp_bytes"), per_seq(r, "temp_bytes")) if ok(f) and ok(r) else None
    )
    r["device_memory_saved"] = ratio(
      per_seq(f, "device_peak_bytes"), per_seq(r, "device_peak_bytes")
    )
    linformer = r["model"] == "linformer"
    r["paper_speedup"] = PAPER_SPEEDUP.get((r["n"], r["k"])) if linformer else None
    r["paper_memory_saved"] = PAPER_MEMORY.get((r["n"], r["k"])) if linformer else None
  return records


def short_status(status: str | None) -> str:
  """'OOM', 'skipped (time)', 'error' or 'not run' from a record's status."""
  if not status or status.startswith("not run"):
    return "not run"
  if status.startswith("skipped (time)"):
    return "skipped (time)"
  return status.split(":")[0].split(" (")[0]


def ratio_cell(
  value: float | None, paper: float | None, full: dict | None, lin: dict | None
) -> str:
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
  lines = ["| n \\ k | " + " | ".join(str(k) for k in ks) + " |", "|---|" + "---|" * len(ks)]
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


def lsh_table(records: list[dict], key: str, ns, rounds) -> str:
  """LSH attention's ratio `key` against the Transformer: rows n, columns the number of rounds."""
  full = {r["n"]: r for r in records if r["model"] == "full"}
  lsh = {(r["n"], r.get("rounds")): r for r in records if r["model"] == "lsh"}
  lines = [
    "| n \\ rounds | " + " | ".join(str(r) for r in rounds) + " |",
    "|---|" + "---|" * len(rounds),
  ]
  for n in ns:
    cells = []
    for count in rounds:
      r = lsh.get((n, count))
      cells.append(ratio_cell(r and r.get(key), None, full.get(n), r))
    lines.append(f"| {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


MODEL_NAMES = {"full": "Transformer", "linformer": "Linformer", "lsh": "LSH"}


def raw_table(records: list[dict]) -> str:
  lines = [
    "| model | n | k / rounds | batch | impl | ms / batch | ms / sequence | compiled peak MiB "
    "| temp MiB | device peak MiB | status |",
    "|---|" + "---:|" * 9 + "---|",
  ]
  mib = lambda b: fmt(b and b / MIB, ".0f")
  order = list(MODEL_NAMES)
  for r in sorted(
    records, key=lambda r: (r["n"], order.index(r["model"]), r["k"] or r.get("rounds") or 0)
  ):
    lines.append(
      " | ".join(
        [
          f"| {MODEL_NAMES[r['model']]}",
          str(r["n"]),
          str(r["k"] or (r.get("rounds") and f"{r['rounds']} rounds") or "—"),
          str(r.get("batch") or "—"),
          str(r.get("impl") or "—"),
          fmt(r.get("ms"), ".1f"),
          fmt(r.get("ms_per_seq"), ".2f"),
          mib(r.get("peak_bytes")),
          mib(r.get("temp_bytes")),
          mib(r.get("device_peak_bytes")),
          str(r.get("status", "not run")) + " |",
        ]
      )
    )
  return "\n".join(lines)


def settings_text(meta: dict) -> str:
  policy = (
    f"fixed token budget: batch = max(1, {meta['tokens']} // n) sequences, the same for both models"
    if meta["batch_policy"] == "tokens"
    else f"largest power-of-two batch that fits (<= {meta['max_batch']}), found per model "
    "from XLA's compiled memory; ratios per sequence"
  )
  limit = meta.get("memory_limit")
  return "\n".join(
    [
      f"- Platform: {meta['platform']} ({meta['device']}), JAX {meta['jax']}; {meta['dtype']}.",
      f"- Model: the project's Encoder, {meta['layers']} layer(s) timed"
      + (
        ""
        if meta["layers"] == 12
        else " (the paper's model has 12; fewer to fit this machine's time budget)"
      )
      + (
        ""
        if meta["memory_layers"] == meta["layers"]
        else f", memory of the {meta['memory_layers']}-layer model (compiled, not run)"
      )
      + ", hidden 768, 12 heads, MLP 3072, vocabulary "
      f"{meta['vocab']} (so the embeddings do not dominate), no task head; forward only, "
      "dropout off, random ids, no padding.",
      "- Linformer: layerwise sharing (one learned n x k matrix for all layers, heads, keys and "
      "values), as in the paper's Table 3. Transformer: full attention."
      + (
        f" LSH (Reformer, not in the paper): {', '.join(map(str, meta['lsh_rounds']))} hash "
        f"rounds, chunks of {meta.get('lsh_chunk')} (at most n), 2 n / chunk buckets, the "
        "project's own einsums."
        if meta.get("lsh_rounds")
        else ""
      ),
      f"- Attention: jax.nn.dot_product_attention, implementation {meta['impl']!r} requested"
      + (f" ({meta['fallbacks']})" if meta.get("fallbacks") else "")
      + ".",
      f"- Batch policy: {policy}. (The paper used the largest batch that fits a 16 GB V100.)",
      f"- Time: median of {meta['repeats']} forward calls after one warm-up"
      + (
        ", the models of one n timed round-robin"
        if not meta["isolate"]
        else ", each model in its own subprocess"
      )
      + f"; cells over {meta['cell_time_limit']:g} s "
      "per call are 'skipped (time)'.",
      "- Memory: XLA's compiled memory analysis, peak = arguments (parameters, inputs) + output "
      "+ temp bytes (nothing is donated, so no aliased bytes to subtract); cells whose compiled "
      "peak exceeds "
      + (f"{limit / GIB:.1f} GiB" if limit else "the device's memory")
      + " are 'OOM'."
      + (
        ""
        if meta["isolate"]
        else " Device peak_bytes_in_use is recorded only with --isolate "
        "(it cannot be reset between models in one process)."
      ),
    ]
  )


def markdown(records: list[dict], meta: dict) -> str:
  ns, ks = meta["ns"], meta["ks"]
  parts = [
    f"# Table 3 on {meta['platform']}: Linformer (layerwise sharing) vs Transformer, inference",
    "",
    settings_text(meta),
    "",
    "## Speed-up (Transformer time / Linformer time, per sequence)",
    "",
    ratio_table(records, "speedup", PAPER_SPEEDUP, ns, ks),
    "",
    "## Memory saved (Transformer / Linformer compiled peak, per sequence)",
    "",
    ratio_table(records, "memory_saved", PAPER_MEMORY, ns, ks),
    "",
    "## Working memory saved (temp bytes only: intermediates, parameters and inputs excluded)",
    "",
    ratio_table(records, "temp_ratio", PAPER_MEMORY, ns, ks),
  ]
  if any(r.get("device_memory_saved") for r in records):
    parts += [
      "",
      "## Memory saved (device peak_bytes_in_use, per sequence)",
      "",
      ratio_table(records, "device_memory_saved", PAPER_MEMORY, ns, ks),
    ]
  rounds = sorted({r["rounds"] for r in records if r["model"] == "lsh" and r.get("rounds")})
  if rounds:
    parts += ["", "## LSH attention (Reformer) against the Transformer, per sequence"]
    for key, title in (
      ("speedup", "Speed-up (Transformer time / LSH time)"),
      ("memory_saved", "Memory saved (compiled peak)"),
      ("temp_ratio", "Working memory saved (temp bytes)"),
    ):
      parts += ["", f"### {title}", "", lsh_table(records, key, ns, rounds)]
    if any(r.get("device_memory_saved") for r in records if r["model"] == "lsh"):
      parts += [
        "",
        "### Memory saved (device peak_bytes_in_use)",
        "",
        lsh_table(records, "device_memory_saved", ns, rounds),
      ]
  parts += ["", "## Raw measurements", "", raw_table(records), ""]
  return "\n".join(parts)


def plot(records: list[dict], path: Path, title: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  lin = [r for r in records if r["model"] == "linformer"]
  lsh = [r for r in records if r["model"] == "lsh"]
  rounds = sorted({r["rounds"] for r in lsh if r.get("rounds")})
  ks = sorted({r["k"] for r in lin})
  colors = dict(
    zip(ks, plt.get_cmap("viridis")([i / max(1, len(ks) - 1) * 0.9 for i in range(len(ks))]))
  )
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  other = "Linformer or LSH" if lsh else "Linformer"
  panels = (
    ("speedup", PAPER_SPEEDUP, f"speed-up (Transformer time / {other} time)"),
    ("memory_saved", PAPER_MEMORY, f"memory saved (Transformer / {other} peak)"),
  )
  for ax, (key, paper, ylabel) in zip(axes, panels):
    for k in ks:
      rows = sorted((r for r in lin if r["k"] == k), key=lambda r: r["n"])
      pts = [(r["n"], r[key]) for r in rows if r.get(key)]
      if pts:
        ax.plot(*zip(*pts), "o-", color=colors[k], label=f"k={k} measured")
      ppts = [(n, paper[(n, k)]) for n in sorted({r["n"] for r in lin}) if (n, k) in paper]
      if ppts:
        ax.plot(*zip(*ppts), "s--", color=colors[k], alpha=0.6, markersize=4, label=f"k={k} paper")
    for i, count in enumerate(rounds):
      rows = sorted((r for r in lsh if r.get("rounds") == count), key=lambda r: r["n"])
      pts = [(r["n"], r[key]) for r in rows if r.get(key)]
      if pts:
        shade = plt.get_cmap("Reds")(0.5 + 0.4 * i / max(1, len(rounds) - 1))
        ax.plot(*zip(*pts), "^:", color=shade, label=f"LSH {count} rounds measured")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_yticks(
      [
        t
        for t in (0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100)
        if low <= t <= high
      ]
    )
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ns = sorted({r["n"] for r in lin + lsh})
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
