r"""Training throughput and model FLOPs utilisation (MFU): Linformer vs full attention.

    python benchmarks/train_throughput.py                  # default sweep, ~10 minutes on 2 cores
    python benchmarks/train_throughput.py --n 512,4096 --attention linformer   # the two checks
    python benchmarks/train_throughput.py --size small --sharing none --layers 0  # small preset

What runs. The project's own train step: `make_trainer(config, task, mesh)` from
`linformer.training.loop` (forward, backward, gradient clipping, AdamW, one jitted call with the
train state donated), with the config of `configs/pretrain.py`
(`get_config('size=base,n=<n>,k=<k>,attention=<kind>,sharing=layerwise')`, dropout 0.1 on as
in training, float32; by default RoBERTa-base widths, hidden 768, 12 heads, MLP 3072, but 2
layers to fit a CPU, `--layers 0` for the preset's 12; layerwise sharing as in the paper's
efficiency experiments), on a single-device mesh (`partitioning.make_mesh({'data': 1})`). The data
is a synthetic masked-LM task (`SyntheticMLMTask`, a `MaskedLMTask` whose `setup` makes random
batches instead of reading a dataset and tokenizer): uniform random token ids from a `--vocab`
vocabulary (default 8000), no padding, m = ceil(0.15 n) predicted positions per sequence (the
pipeline's `max_predictions`), all weighted.

Tokens per step are constant across n (`--tokens_per_step`, default 4096: batch 8 at n=512, 1 at
n=4096; batch = tokens / n), so time per token
is comparable between sequence lengths. For each n, the Linformer and full-attention steps are
compiled ahead of time, run `--warmup` times (not timed), then timed `--repeats` times
interleaved (Linformer, full, Linformer, ...), each call ended with `block_until_ready` on the new
train state and metrics; the median is reported. Interleaving makes load from other processes on
a shared machine hit both models alike.

Model FLOPs (the numerator of MFU) are counted analytically by `linformer.flops.train_flops`
(its module docstring has the formulas): matrix multiplications only, each (m x k) @ (k x n)
product counted 2 m k n, forward + backward = 3 x forward (2 x for a fixed `random` projection,
which gets no gradient); embedding lookups, LayerNorm, GELU, softmax, dropout, the loss,
gradient clipping and the optimizer update are not counted; the MLM head is counted at the m
masked slots only, as `MaskedLM` computes it. As a cross-check the table also shows XLA's own
FLOP estimate of the compiled step (`compiled.cost_analysis()['flops']`), which counts every
operation, elementwise ones included, and so is an upper bound on the matmul count.

The MFU denominator is the float32 matrix-multiply rate measured in this run on this machine: a
jitted `jnp.dot` of two `--peak_size` square float32 matrices, best of `--peak_repeats` calls,
measured before and after the sweep (the larger is used). MFU = model FLOPs per second / that
rate. It is a *measured* peak of this machine's matmul library, not a datasheet number, so MFU on
CPU says how much of the step runs at matmul speed; on a loaded machine both numbers drop.

A cell that does not fit is marked, not dropped: "OOM" when XLA's compiled peak
(`linformer.measure.compiled_memory`: arguments + outputs + temporaries - donated aliases, the
train state being donated) exceeds the machine's available memory (checked before running) or a
step fails out of memory, "error" when compilation or a step fails otherwise. The table is
printed as markdown and written to benchmarks/results/train_throughput_<platform>.csv, followed
by the project's two checks:

* Linformer (k=128) time per token at n=4096 / at n=512 <= 1.3 (linear cost in n).
* Linformer MFU at n=4096 >= 50%.

Run from the repository root with the package installed (`pip install -e .`) or `PYTHONPATH=.`.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from linformer.config import PROJECTIONS, SHARING_MODES, ModelConfig
from linformer.flops import MASK_PROB, matmul_rate, train_flops
from linformer.measure import (
  MIB,
  compiled_flops,
  compiled_memory,
  failure_status,
  fmt,
  ints,
  memory_limit,
  over_limit,
  time_interleaved,
  write_csv,
)
from linformer.tasks.mlm import MaskedLMTask
from linformer.training import partitioning
from linformer.training.trainer import make_trainer

SPECIAL_IDS = 5  # ids 0..4 are reserved (pad, bos, eos, unk, mask), as a tokenizer would
MASK_ID = 4
CHECKS = dict(n_small=512, n_large=4096, k=128, time_ratio=1.3, mfu=0.50)


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
  )
  p.add_argument("--n", type=ints, default=[512, 1024, 2048, 4096], help="sequence lengths")
  p.add_argument("--k", type=int, default=128, help="Linformer projected length")
  p.add_argument("--size", default="base", help="configs/pretrain.py size preset")
  p.add_argument(
    "--layers",
    type=int,
    default=2,
    help="num_layers (the small preset has 6; 2 keeps the default sweep to minutes "
    "on 2 CPU cores: per-token cost and MFU are per-layer properties; the "
    "embeddings and MLM head weigh a little more with fewer layers); 0: preset's",
  )
  p.add_argument("--hidden", type=int, default=None, help="override the preset's hidden_size")
  p.add_argument("--heads", type=int, default=None, help="override the preset's num_heads")
  p.add_argument("--mlp", type=int, default=None, help="override the preset's mlp_dim")
  p.add_argument("--vocab", type=int, default=8000, help="synthetic vocabulary size")
  p.add_argument(
    "--sharing",
    choices=SHARING_MODES,
    default="layerwise",
    help="Linformer sharing (layerwise: the paper's efficiency setting)",
  )
  p.add_argument(
    "--projection",
    choices=PROJECTIONS,
    default=None,
    help="Linformer projection; None: the pretrain config's default",
  )
  p.add_argument(
    "--dropout",
    type=float,
    default=None,
    help="dropout and attention dropout; None: the config's (0.1, as in training)",
  )
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument(
    "--tokens_per_step",
    type=int,
    default=4096,
    help="tokens per train step, the same for every n (batch = tokens / n)",
  )
  p.add_argument(
    "--attention", default="linformer,full", help="attention kinds to run, comma separated"
  )
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  p.add_argument("--repeats", type=int, default=3, help="timed steps per cell (median)")
  p.add_argument("--peak_size", type=int, default=2048, help="matrix size of the peak matmul")
  p.add_argument("--peak_repeats", type=int, default=5, help="timed peak matmuls (best)")
  p.add_argument(
    "--out", default=None, help="CSV path; None: benchmarks/results/train_throughput_<platform>.csv"
  )
  return p.parse_args(argv)


def get_config(arg: str):
  """configs/pretrain.py's config, loaded from its file as train.py's --config flag loads it:
  configs/ is not part of the installed package."""
  path = Path(__file__).resolve().parents[1] / "configs" / "pretrain.py"
  spec = importlib.util.spec_from_file_location("pretrain_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# The synthetic task.


class SyntheticMLMTask(MaskedLMTask):
  """`MaskedLMTask` on random batches: no dataset, no tokenizer.

  Batches have the pipeline's fields and shapes: `input_ids` (uniform over the non-special ids,
  the predicted positions replaced by the mask id), `attention_mask` (all ones: the pipeline
  packs full blocks), and m = ceil(0.15 n) `mlm_positions`, `mlm_targets`, `mlm_weights`.
  """

  def __init__(self, config, vocab_size: int, num_batches: int = 2):
    super().__init__(config)
    self.vocab_size, self.num_batches = vocab_size, num_batches

  def setup(self, workdir: str, per_host_batch_size: int) -> None:
    del workdir
    n = self.config.model.max_len
    m = math.ceil(MASK_PROB * n)
    rng = np.random.default_rng(self.config.seed)
    self.batches = []
    for _ in range(self.num_batches):
      ids = rng.integers(SPECIAL_IDS, self.vocab_size, (per_host_batch_size, n), dtype=np.int32)
      positions = np.sort(
        np.stack([rng.choice(n, m, replace=False) for _ in range(per_host_batch_size)]), axis=1
      )
      positions = positions.astype(np.int32)
      targets = np.take_along_axis(ids, positions, axis=1)
      np.put_along_axis(ids, positions, MASK_ID, axis=1)
      self.batches.append(
        dict(
          input_ids=ids,
          attention_mask=np.ones((per_host_batch_size, n), np.int32),
          mlm_positions=positions,
          mlm_targets=targets,
          mlm_weights=np.ones((per_host_batch_size, m), np.float32),
        )
      )

  def model_config(self) -> ModelConfig:
    return ModelConfig.from_dict({**self.config.model.to_dict(), "vocab_size": self.vocab_size})

  def train_iterator(self):
    return itertools.cycle(self.batches)

  def eval_batches(self):
    return list(self.batches)

  def eval_summary(self, outputs):
    return self.summarize(outputs)  # no unigram baseline without a dataset


def make_config(attention: str, n: int, args):
  batch = args.tokens_per_step // n
  spec = f"size={args.size},n={n},k={args.k},attention={attention},batch={batch},steps=1000"
  if args.sharing:
    spec += f",sharing={args.sharing}"
  if args.projection:
    spec += f",projection={args.projection}"
  config = get_config(spec)
  for flag, field in (
    ("layers", "num_layers"),
    ("hidden", "hidden_size"),
    ("heads", "num_heads"),
    ("mlp", "mlp_dim"),
  ):
    if getattr(args, flag):
      config.model[field] = getattr(args, flag)
  if args.dropout is not None:
    config.model.dropout_rate = config.model.attention_dropout_rate = args.dropout
  config.model.dtype = args.dtype
  config.mesh.data = 1  # one device: partitioning.make_mesh({"data": 1, ...})
  return config


def timed_step(compiled, trainer, task, mesh):
  """A fresh train state and a call that runs one `compiled` step on the task's next batch
  and returns its seconds (a loss that is not finite raises)."""
  state = jax.jit(trainer.init_state, out_shardings=trainer.state_sharding)()
  batches = itertools.cycle([partitioning.global_batch(b, mesh) for b in task.batches])
  holder = {"state": state}

  def step():
    start = time.perf_counter()
    holder["state"], metrics = compiled(holder["state"], next(batches))
    jax.block_until_ready((holder["state"], metrics))
    elapsed = time.perf_counter() - start
    if not np.isfinite(float(metrics["loss"])):
      raise FloatingPointError(f"loss {float(metrics['loss'])}")
    return elapsed

  return step


def prepare(attention: str, n: int, args) -> dict:
  """Builds, compiles and warms up one cell; returns its static numbers and a timed `step`, or
  a status saying why there are none."""
  if args.tokens_per_step % n:
    return dict(status=f"error: tokens_per_step {args.tokens_per_step} not divisible by n={n}")
  try:
    config = make_config(attention, n, args)
    mesh = partitioning.make_mesh(config.mesh)
    task = SyntheticMLMTask(config, args.vocab)
    task.setup("", per_host_batch_size=config.batch_size)
    trainer = make_trainer(config, task, mesh)
    cfg = task.model_config()
    batch = partitioning.global_batch(task.batches[0], mesh)
    compiled = trainer.train_step.lower(trainer.abstract_state(), batch).compile()
    peak = compiled_memory(compiled)["peak"]
    m = task.batches[0]["mlm_positions"].shape[1]
    flops = {
      part: config.batch_size * value
      for part, value in train_flops(cfg, n, "mlm", num_predictions=m).items()
    }
    info = dict(
      cfg=cfg, batch=config.batch_size, peak=peak, flops=flops, xla_flops=compiled_flops(compiled)
    )
    if oom := over_limit(peak, memory_limit()):
      return dict(info, status=oom)

    step = timed_step(compiled, trainer, task, mesh)
    for _ in range(args.warmup):
      step()
    return dict(info, status="ok", call=step)
  except Exception as e:  # noqa: BLE001 -- a failing cell is reported, the sweep goes on
    return dict(status=failure_status(e, limit=300))


def run_sweep(args) -> tuple[list[dict], float, float]:
  kinds = [a for a in args.attention.split(",") if a]
  print(f"measuring the {args.peak_size}^3 float32 matmul rate ...", flush=True)
  peak_before = matmul_rate(args.peak_size, args.peak_repeats)
  print(f"  {peak_before / 1e9:.1f} GFLOP/s", flush=True)
  rows = []
  for n in args.n:
    group = []
    for attention in kinds:
      print(f"n={n} {attention}: compiling and warming up ...", flush=True)
      t0 = time.perf_counter()
      group.append(dict(prepare(attention, n, args), attention=attention, n=n))
      print(f"  {group[-1]['status'][:200]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"n={n}: timing {args.repeats} steps each ...", flush=True)
    time_interleaved(group, args.repeats)
    rows += group
  peak_after = matmul_rate(args.peak_size, args.peak_repeats)
  print(f"matmul rate after the sweep: {peak_after / 1e9:.1f} GFLOP/s", flush=True)
  return rows, peak_before, peak_after


def finish(rows: list[dict], peak: float, args) -> list[dict]:
  out = []
  for r in rows:
    flops = r.get("flops")
    total = sum(flops.values()) if flops else None
    step_s = r.get("median_s")
    tokens = args.tokens_per_step
    achieved = total / step_s if total and step_s else None
    cfg = r.get("cfg")
    out.append(
      dict(
        attention=r["attention"],
        n=r["n"],
        k=args.k if r["attention"] == "linformer" else None,
        batch=r.get("batch"),
        tokens_per_step=tokens,
        layers=cfg and cfg.num_layers,
        hidden=cfg and cfg.hidden_size,
        heads=cfg and cfg.num_heads,
        mlp=cfg and cfg.mlp_dim,
        vocab=cfg and cfg.vocab_size,
        sharing=cfg and (cfg.sharing if r["attention"] == "linformer" else None),
        projection=cfg and (cfg.projection if r["attention"] == "linformer" else None),
        dtype=args.dtype,
        dropout=cfg and cfg.dropout_rate,
        step_s=step_s,
        us_per_token=step_s and 1e6 * step_s / tokens,
        tokens_per_s=step_s and tokens / step_s,
        model_gflop_per_step=total and total / 1e9,
        **{f"gflop_{key}": value / 1e9 for key, value in (flops or {}).items()},
        xla_gflop_per_step=r.get("xla_flops") and r["xla_flops"] / 1e9,
        achieved_gflop_s=achieved and achieved / 1e9,
        matmul_peak_gflop_s=peak / 1e9,
        mfu=achieved and achieved / peak,
        compiled_mib=r.get("peak") and r["peak"] / MIB,
        step_times_s=" ".join(f"{t:.3f}" for t in r.get("times", [])),
        status=r["status"],
      )
    )
  return out


def markdown(rows: list[dict]) -> str:
  head = (
    "| attention | n | batch | step s | us/token | tokens/s | model GFLOP/step "
    "| XLA GFLOP/step | GFLOP/s | MFU | compiled MiB |"
  )
  lines = [head, "|---|" + "---:|" * (head.count(" | "))]
  for r in rows:
    status = r["status"].split(":")[0].split(" (")[0]
    lines.append(
      "| "
      + " | ".join(
        [
          r["attention"] + (f" k={r['k']}" if r["k"] else ""),
          str(r["n"]),
          str(r["batch"]),
          fmt(r["step_s"], ".2f", status),
          fmt(r["us_per_token"], ".0f", status),
          fmt(r["tokens_per_s"], ".0f", status),
          fmt(r["model_gflop_per_step"], ".0f"),
          fmt(r["xla_gflop_per_step"], ".0f"),
          fmt(r["achieved_gflop_s"], ".1f", status),
          fmt(r["mfu"] and 100 * r["mfu"], ".1f", status, "%"),
          fmt(r["compiled_mib"], ".0f"),
        ]
      )
      + " |"
    )
  return "\n".join(lines)


def checks(rows: list[dict]) -> list[str]:
  c = CHECKS
  lin = {r["n"]: r for r in rows if r["attention"] == "linformer" and r["k"] == c["k"]}
  small, large = lin.get(c["n_small"], {}), lin.get(c["n_large"], {})
  out = []
  head = f"Linformer (k={c['k']}) time per token n={c['n_large']} / n={c['n_small']}: "
  if small.get("us_per_token") and large.get("us_per_token"):
    ratio = large["us_per_token"] / small["us_per_token"]
    out.append(
      head + f"{ratio:.2f} (target <= {c['time_ratio']}) -> "
      f"{'PASS' if ratio <= c['time_ratio'] else 'FAIL'}"
    )
  else:
    out.append(head + "not measured -> FAIL")
  head = f"Linformer MFU at n={c['n_large']}: "
  if large.get("mfu") is not None:
    out.append(
      head + f"{100 * large['mfu']:.1f}% (target >= {100 * c['mfu']:.0f}%) -> "
      f"{'PASS' if large['mfu'] >= c['mfu'] else 'FAIL'}"
    )
  else:
    out.append(head + "not measured -> FAIL")
  return out


def main(argv=None) -> int:
  args = parse_args(argv)
  device = jax.devices()[0]
  print(
    f"JAX {jax.__version__} on {jax.default_backend()} ({device.device_kind}, "
    f"{os.cpu_count()} CPUs); {args.tokens_per_step} tokens/step, {args.dtype}, "
    f"median of {args.repeats} steps after {args.warmup} warm-up",
    flush=True,
  )
  raw, before, after = run_sweep(args)
  peak = max(before, after)
  rows = finish(raw, peak, args)
  ok = next((r for r in rows if r["layers"]), None)
  if ok:
    lin = next((r for r in rows if r["attention"] == "linformer" and r["sharing"]), ok)
    print(
      f"\n### Train step, {ok['layers']} layers, hidden {ok['hidden']}, {ok['heads']} heads, "
      f"MLP {ok['mlp']}, vocab {ok['vocab']}, dropout {ok['dropout']}, {args.dtype}; "
      f"Linformer sharing={lin['sharing']}, projection={lin['projection']}\n"
    )
  print(
    "model FLOPs: matmuls only, forward + backward = 3 x forward, embeddings excluded, MLM "
    "head at the masked slots; XLA GFLOP = compiled cost analysis (all ops)."
  )
  print(
    f"MFU = model GFLOP/s / measured {args.peak_size}^3 float32 matmul rate "
    f"{peak / 1e9:.1f} GFLOP/s (before {before / 1e9:.1f}, after {after / 1e9:.1f}).\n"
  )
  print(markdown(rows))
  for r in rows:
    if r["status"] != "ok":
      print(f"n={r['n']} {r['attention']}: {r['status']}")
  path = Path(
    args.out or Path(__file__).parent / "results" / f"train_throughput_{jax.default_backend()}.csv"
  )
  write_csv(rows, path)
  print(f"\nwrote {path}\n")
  print("\n".join(checks(rows)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
