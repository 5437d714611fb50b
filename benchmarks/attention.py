"""Linformer and LSH (Reformer) vs full attention: forward time and compiled memory, side by side.

    python benchmarks/attention.py                    # default sweep, a few minutes on 2 CPU cores
    python benchmarks/attention.py --encoder_n 512,1024,2048,4096 --dtype bfloat16

What is measured, for each sequence length n, (Linformer) projected length k and (LSH) number of
hash rounds:

* Two components at RoBERTa-base widths (hidden 768, 12 heads, MLP 3072): one `SelfAttention`
  layer, and the 12-layer `Encoder` with a 1000-token vocabulary so that the embedding table does
  not weigh in the parameters. Full attention does not depend on k; it is measured once per n.
  LSH attention (`attention='lsh'`) runs --lsh_rounds rounds (4 and 8 by default) over chunks of
  --lsh_chunk tokens (64) and the paper's 2 n / chunk buckets; evaluation's fixed rotations.
* Forward time: the jit-compiled forward pass, dropout off (deterministic=True), one warm-up call
  excluded, median wall time of --repeats calls, each ended with `block_until_ready`. The calls
  of every model at one n are interleaved, so other load on the machine hits them alike.
* Memory, from XLA's compiled memory analysis (`jax.jit(f).lower(...).compile().memory_analysis()`),
  so it is what the compiler plans, not a sampled process RSS:
    - "temp" (temp_size_in_bytes): the intermediates of the computation, parameters, input and
      output excluded. For the single layer this is the attention's working memory: the n x n
      logits and softmax weights of full attention against n x k for Linformer and
      rounds x n x 2 chunk for LSH (which also keeps each round's sorted copies of Q, K and V),
      plus Q and the heads' output. The project's memory check uses this number.
    - "peak" (argument + output + temp bytes; `linformer.measure.compiled_memory`, no donated
      aliases here): everything live during the call, parameters and input/output included.
      The projections, MLP and residual stream cost the same in every model, so this ratio is
      smaller than the temp ratio.
* Batch size 1 by default: the n-dependence is the point, and batch scales time and temp
  memory of both models roughly linearly, so it changes the ratios little.

The paper's 3.4x / 14x at n=4096, k=128 (its inference-efficiency table) were measured on the
whole model on a GPU, at the largest batch that fits; the project checks them on the single
layer's forward time and temp memory, the part Linformer changes. The encoder table shows how
much of that survives in a whole model.

A cell that does not fit is marked, not dropped: "OOM" when the compiled peak exceeds the device's
memory (on CPU, the machine's available RAM; checked before running), "error" when compilation or
the run fails. Tables are printed as markdown and written to
benchmarks/results/attention_<platform>.csv (rewritten after every n, so a sweep cut short keeps
what it measured), with a plot of time and temp memory against n
(attention_<platform>.png) and, for every model, the crossover: the n from which it beats full
attention in time and in memory (a model that fits where full attention does not counts as
beating it).

    python benchmarks/attention.py --layer_n 512,1024,2048,4096,8192,16384 \
        --encoder_n 512,1024,2048,4096,8192,16384 --repeats 3   # the long-n sweep (REPRODUCING)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm import tqdm

from linformer.attention import SelfAttention, SeqProjection
from linformer.config import PROJECTIONS, SHARING_MODES, ModelConfig
from linformer.measure import (
  MIB,
  compile_forward,
  compiled_memory,
  failure_status,
  fmt,
  ints,
  memory_limit,
  over_limit,
  ratio,
  time_interleaved,
  timed_call,
  write_csv,
)
from linformer.model import Encoder

CHECK = dict(component="layer", n=4096, k=128, speedup=3.4, memory=14.0)  # paper, Sec. 5.3


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
  )
  p.add_argument(
    "--layer_n",
    type=ints,
    default=[512, 1024, 2048, 4096],
    help="sequence lengths for the single attention layer",
  )
  p.add_argument(
    "--encoder_n",
    type=ints,
    default=[512, 1024, 2048],
    help="sequence lengths for the 12-layer encoder (empty to skip)",
  )
  p.add_argument("--k", type=ints, default=[128, 256], help="Linformer projected lengths")
  p.add_argument(
    "--lsh_rounds", type=ints, default=[4, 8], help="LSH attention's hash rounds (empty to skip)"
  )
  p.add_argument("--lsh_chunk", type=int, default=64, help="LSH attention's chunk length")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--sharing", choices=SHARING_MODES, default="layerwise")
  p.add_argument("--projection", choices=PROJECTIONS, default="learned")
  p.add_argument("--repeats", type=int, default=5, help="timed calls per cell (median)")
  p.add_argument(
    "--out", default=None, help="CSV path; None: benchmarks/results/attention_<platform>.csv"
  )
  return p.parse_args(argv)


def build(component: str, attention: str, n: int, variant: int | None, args):
  """The module and its example inputs (arrays only, so they can go through jit); `variant` is
  Linformer's k or LSH attention's number of rounds."""
  lsh = dict(lsh_rounds=variant, lsh_chunk_len=args.lsh_chunk) if attention == "lsh" else {}
  k = variant if attention == "linformer" else 128
  cfg = ModelConfig(
    vocab_size=1000,
    max_len=n,
    attention=attention,
    k=k,
    **lsh,
    sharing=args.sharing,
    projection=args.projection,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    dtype=args.dtype,
  )
  rngs = nnx.Rngs(0)
  mask = jnp.ones((args.batch, n), bool)
  if component == "encoder":
    ids = jax.random.randint(jax.random.key(1), (args.batch, n), 0, cfg.vocab_size)
    return Encoder(cfg, rngs=rngs), (ids, mask)
  shared = None
  if attention == "linformer" and cfg.sharing == "layerwise":  # as Encoder builds it
    shared = SeqProjection(cfg.projection, n, k, None, rngs=rngs)
  x = jax.random.normal(jax.random.key(1), (args.batch, n, cfg.hidden_size), jnp.dtype(args.dtype))
  return SelfAttention(cfg, 0, shared, rngs=rngs), (x, mask)


def prepare(component: str, attention: str, n: int, variant: int | None, args) -> dict:
  """Compiles one cell and runs its warm-up call: its temp and peak bytes and a timed `call`,
  or a status saying why there are none."""
  try:
    module, inputs = build(component, attention, n, variant, args)
    compiled, state = compile_forward(module, inputs)
    mem = compiled_memory(compiled)
    temp, peak = mem["temp"], mem["peak"]
    if oom := over_limit(peak, memory_limit()):
      return dict(status=oom, temp=temp, peak=peak)
    call = timed_call(compiled, state, *inputs)
    call()  # warm-up, not timed
    return dict(status="ok", temp=temp, peak=peak, call=call)
  except Exception as e:  # noqa: BLE001 -- a failing cell is reported, the sweep goes on
    return dict(status=failure_status(e))


def label(attention: str, variant: int | None) -> str:
  return f"linformer k={variant}" if attention == "linformer" else f"lsh {variant} rounds"


def row_label(row: dict) -> str:
  return label(row["model"], row["k"] or row["rounds"])


def run_sweep(args, csv_path: Path | None = None) -> list[dict]:
  """Every cell, timed one n at a time; the rows measured so far are written to `csv_path` after
  each n, so a sweep killed at n = 16384 keeps what it measured up to 8192."""
  cells = []
  for component, ns in (("layer", args.layer_n), ("encoder", args.encoder_n)):
    for n in ns:
      cells.append((component, "full", n, None))  # full attention has no k
      cells += [(component, "linformer", n, k) for k in args.k]
      cells += [(component, "lsh", n, rounds) for rounds in args.lsh_rounds]
  results = {}
  with tqdm(total=len(cells), unit="cell") as bar:
    for component, n in dict.fromkeys((c, n) for c, _, n, _ in cells):
      group = [cell for cell in cells if cell[::2] == (component, n)]
      for cell in group:
        bar.set_description(
          f"{component} n={n} compiling " + (label(*cell[1::2]) if cell[1] != "full" else "full")
        )
        results[cell] = prepare(*cell, args)
      bar.set_description(f"{component} n={n} timing")
      time_interleaved([results[cell] for cell in group], args.repeats)
      bar.update(len(group))
      if csv_path is not None:
        write_csv(comparisons(cells, results, args), csv_path)
  return comparisons(cells, results, args)


def comparisons(cells: list[tuple], results: dict, args) -> list[dict]:
  """One row per measured (component, n, model) against full attention at that n."""
  ms = lambda r: r.get("median_s") and 1e3 * r["median_s"]
  rows = []
  for component, attention, n, variant in cells:
    if attention == "full" or (component, attention, n, variant) not in results:
      continue
    full = results[(component, "full", n, None)]
    other = results[(component, attention, n, variant)]
    rows.append(
      dict(
        component=component,
        n=n,
        model=attention,
        k=variant if attention == "linformer" else None,
        rounds=variant if attention == "lsh" else None,
        chunk=args.lsh_chunk if attention == "lsh" else None,
        batch=args.batch,
        dtype=args.dtype,
        sharing=args.sharing if attention == "linformer" else None,
        projection=args.projection if attention == "linformer" else None,
        full_ms=ms(full),
        model_ms=ms(other),
        speedup=ratio(ms(full), ms(other)),
        full_temp_bytes=full.get("temp"),
        model_temp_bytes=other.get("temp"),
        temp_ratio=ratio(full.get("temp"), other.get("temp")),
        full_peak_bytes=full.get("peak"),
        model_peak_bytes=other.get("peak"),
        peak_ratio=ratio(full.get("peak"), other.get("peak")),
        full_status=full["status"],
        model_status=other["status"],
      )
    )
  return rows


def markdown(rows: list[dict], component: str) -> str:
  head = (
    "| n | model | full ms | model ms | speed-up (full/model) | full temp MiB | model temp MiB "
    "| temp ratio | full peak MiB | model peak MiB | peak ratio |"
  )
  lines = [head, "|" + "---:|" * head.count(" | ") + "---:|"]
  for r in rows:
    if r["component"] != component:
      continue
    full_ms = fmt(r["full_ms"], ".1f", r["full_status"].split(":")[0])
    model_ms = fmt(r["model_ms"], ".1f", r["model_status"].split(":")[0])
    mib = lambda b: fmt(b and b / MIB, ".1f")
    lines.append(
      " | ".join(
        [
          f"| {r['n']}",
          row_label(r),
          full_ms,
          model_ms,
          fmt(r["speedup"], ".2f", suffix="x"),
          mib(r["full_temp_bytes"]),
          mib(r["model_temp_bytes"]),
          fmt(r["temp_ratio"], ".1f", suffix="x"),
          mib(r["full_peak_bytes"]),
          mib(r["model_peak_bytes"]),
          fmt(r["peak_ratio"], ".2f", suffix="x") + " |",
        ]
      )
    )
  return "\n".join(lines)


def wins(row: dict, what: str) -> bool | None:
  """Does the model beat full attention in `what` ("speedup" or "temp_ratio") at this row?
  None when neither side was measured; a model that ran where full attention did not wins."""
  if row[what] is not None:
    return row[what] > 1.0
  if row["model_status"] == "ok" and row["full_status"] != "ok":
    return True
  if row["full_status"] == "ok" and row["model_status"] != "ok":
    return False
  return None


def crossover(rows: list[dict]) -> list[dict]:
  """Per component and model: the smallest measured n from which it beats full attention at every
  larger measured n too, in time and in temp memory (None: not within the sweep)."""
  key_of = lambda r: (r["component"], row_label(r))
  out = []
  for key in dict.fromkeys(map(key_of, rows)):
    mine = sorted((r for r in rows if key_of(r) == key), key=lambda r: r["n"])
    found = dict(component=key[0], model=key[1], max_n=mine[-1]["n"])
    for what, name in (("speedup", "time_n"), ("temp_ratio", "memory_n")):
      verdicts = [(r["n"], wins(r, what)) for r in mine]
      verdicts = [(n, w) for n, w in verdicts if w is not None]
      found[name] = None
      for i, (n, _) in enumerate(verdicts):
        if all(later for _, later in verdicts[i:]):
          found[name] = n
          break
    out.append(found)
  return out


def crossover_text(rows: list[dict]) -> str:
  lines = [
    "| component | model | beats full attention in time from n = | in memory (temp) from n = |",
    "|---|---|---:|---:|",
  ]
  show = lambda n, top: str(n) if n is not None else f"not up to {top}"
  for c in crossover(rows):
    lines.append(
      f"| {c['component']} | {c['model']} | {show(c['time_n'], c['max_n'])} "
      f"| {show(c['memory_n'], c['max_n'])} |"
    )
  return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
  """Forward time and temp memory against n, log-log, one line per model, full attention dashed."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  components = [c for c in ("layer", "encoder") if any(r["component"] == c for r in rows)]
  fig, axes = plt.subplots(2, len(components), figsize=(6 * len(components), 8), squeeze=False)
  for col, component in enumerate(components):
    mine = [r for r in rows if r["component"] == component]
    full = {r["n"]: (r["full_ms"], r["full_temp_bytes"]) for r in mine}
    series = {"full attention": sorted(full.items())}
    for r in mine:
      series.setdefault(row_label(r), []).append((r["n"], (r["model_ms"], r["model_temp_bytes"])))
    for row, (idx, ylabel) in enumerate(((0, "forward ms"), (1, "temp MiB"))):
      ax = axes[row][col]
      for name, points in series.items():
        pts = [(n, v[idx]) for n, v in sorted(points) if v[idx] is not None]
        if pts:
          xs, ys = zip(*pts)
          ys = ys if idx == 0 else [y / MIB for y in ys]
          ax.plot(xs, ys, "--" if name == "full attention" else "-o", label=name, markersize=3)
      ax.set(xscale="log", yscale="log", xlabel="n", ylabel=ylabel)
      ax.set_xticks(sorted(full), [str(n) for n in sorted(full)])
      ax.minorticks_off()
      what = "one attention layer" if component == "layer" else "12-layer encoder"
      ax.set_title(f"{what}: {ylabel}")
      ax.grid(True, which="both", alpha=0.3)
      ax.legend(fontsize=8)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def check(rows: list[dict]) -> str:
  c = CHECK
  row = next(
    (
      r
      for r in rows
      if (r["component"], r["model"], r["n"], r["k"])
      == (c["component"], "linformer", c["n"], c["k"])
    ),
    None,
  )
  head = f"Linformer at n={c['n']}, k={c['k']} (single attention layer): "
  if row is None or row["speedup"] is None or row["temp_ratio"] is None:
    return head + "not measured in this sweep -> FAIL"
  ok = row["speedup"] >= c["speedup"] and row["temp_ratio"] >= c["memory"]
  return (
    head + f"speed-up {row['speedup']:.2f}x (paper {c['speedup']}x), attention memory "
    f"saving {row['temp_ratio']:.1f}x (paper {c['memory']:.0f}x; temp bytes, parameters "
    f"and input/output excluded) -> {'PASS' if ok else 'FAIL'}"
  )


def main(argv=None) -> int:
  args = parse_args(argv)
  device = jax.devices()[0]
  print(
    f"JAX {jax.__version__} on {jax.default_backend()} ({device.device_kind}); batch "
    f"{args.batch}, {args.dtype}, sharing={args.sharing}, projection={args.projection}, "
    f"LSH chunks of {args.lsh_chunk}, median of {args.repeats} after 1 warm-up"
  )
  path = Path(
    args.out or Path(__file__).parent / "results" / f"attention_{jax.default_backend()}.csv"
  )
  rows = run_sweep(args, path)
  print(
    "\ntemp = XLA temp_size_in_bytes (attention working memory: intermediates only); "
    "peak = argument + output + temp bytes (parameters and input/output included)."
  )
  for component, title in (
    ("layer", "One SelfAttention layer"),
    ("encoder", "12-layer Encoder (vocab 1000)"),
  ):
    if any(r["component"] == component for r in rows):
      print(f"\n### {title}, hidden 768, 12 heads\n\n{markdown(rows, component)}")
  print("\nCrossover (the first measured n from which the model stays ahead):\n")
  print(crossover_text(rows))
  png = plot(rows, path.with_suffix(".png"))
  print(f"\nwrote {path} and {png}\n\n{check(rows)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
