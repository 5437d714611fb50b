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
efficiency experiments), on a single-device mesh (`partitioning.make_mesh({'data': 1})`). The data is
a synthetic masked-LM task (`SyntheticMLMTask`, a `MaskedLMTask` whose `setup` makes random
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

Model FLOPs (the numerator of MFU) are counted analytically, matrix multiplications only, each
(m x k) @ (k x n) product counted 2 m k n, and forward + backward = 3 x forward (the backward of a
matmul is two matmuls of the same size; for `projection=random` E and F get no gradient, so 3x
slightly overcounts there). Not counted: embedding lookups and their gradient scatter (gathers,
not matmuls), LayerNorm, GELU, softmax, dropout, the loss, gradient clipping and the optimizer
update. With B sequences of length n, T = B n tokens, L layers, width H, MLP width F, k the
projected length (k' = number of pooling windows for pool/conv projections, = k here), m masked
slots per sequence and vocabulary V, the forward FLOPs are

    per layer   Q, output dense            2 T H^2 each
                MLP (in and out)           2 * 2 T H F
                K, V dense                 full / Linformer with per-head or max-pool projections:
                                             2 T H^2 each
                                           Linformer, shared linear projection (headwise, kv,
                                             layerwise; `_project_inputs_first`): applied to the
                                             projected inputs, 2 B k H^2 each
                sequence projection        learned/random E, F: 2 B k n H each (per head, or of
                  (Linformer only)           X, the same count; projecting inputs first also
                                             applies E to the all-ones column, 2 B k n each);
                                             conv: 2 T H each (r taps over n/r windows); mean and
                                             max pooling: none (not matmuls)
                attention scores Q K^T     full: 2 B n^2 H;  Linformer: 2 B n k H
                attention output P V       full: 2 B n^2 H;  Linformer: 2 B n k H
    MLM head    dense                      2 B m H^2         (at the m masked slots only, as
                tied decoder               2 B m H V          `MaskedLM` computes it)

and model FLOPs per step = 3 x (L x per layer + head). For `kv` and `layerwise` sharing the code
calls the (same) projection for K and for V separately; both calls are counted, as written.
As a cross-check the table also shows XLA's own FLOP estimate of the compiled step
(`compiled.cost_analysis()['flops']`), which counts every operation, elementwise ones included,
and so is an upper bound on the matmul count.

The MFU denominator is the float32 matrix-multiply rate measured in this run on this machine: a
jitted `jnp.dot` of two `--peak_size` square float32 matrices, best of `--peak_repeats` calls,
measured before and after the sweep (the larger is used). MFU = model FLOPs per second / that
rate. It is a *measured* peak of this machine's matmul library, not a datasheet number, so MFU on
CPU says how much of the step runs at matmul speed; on a loaded machine both numbers drop.

A cell that does not fit is marked, not dropped: "OOM" when XLA's compiled memory (arguments +
outputs + temporaries - donated aliases) exceeds the machine's available memory (checked before
running), "error" when compilation or a step fails. The table is printed as markdown and written
to benchmarks/results/train_throughput_<platform>.csv, followed by the project's two checks:

* Linformer (k=128) time per token at n=4096 / at n=512 <= 1.3 (linear cost in n).
* Linformer MFU at n=4096 >= 50%.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from configs.pretrain import get_config  # noqa: E402
from linformer.analysis.efficiency import memory_limit, write_csv  # noqa: E402
from linformer.config import PROJECTIONS, SHARING_MODES, ModelConfig  # noqa: E402
from linformer.tasks.mlm import MaskedLMTask  # noqa: E402
from linformer.training import partitioning  # noqa: E402
from linformer.training.loop import make_trainer  # noqa: E402

MIB = 2**20
MASK_PROB = 0.15
SPECIAL_IDS = 5  # ids 0..4 are reserved (pad, bos, eos, unk, mask), as a tokenizer would
MASK_ID = 4
CHECKS = dict(n_small=512, n_large=4096, k=128, time_ratio=1.3, mfu=0.50)


def ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--n", type=ints, default=[512, 1024, 2048, 4096], help="sequence lengths")
  p.add_argument("--k", type=int, default=128, help="Linformer projected length")
  p.add_argument("--size", default="base", help="configs/pretrain.py size preset")
  p.add_argument("--layers", type=int, default=2,
                 help="num_layers (the small preset has 6; 2 keeps the default sweep to minutes "
                 "on 2 CPU cores: per-token cost and MFU are per-layer properties; the "
                 "embeddings and MLM head weigh a little more with fewer layers); 0: preset's")
  p.add_argument("--hidden", type=int, default=None, help="override the preset's hidden_size")
  p.add_argument("--heads", type=int, default=None, help="override the preset's num_heads")
  p.add_argument("--mlp", type=int, default=None, help="override the preset's mlp_dim")
  p.add_argument("--vocab", type=int, default=8000, help="synthetic vocabulary size")
  p.add_argument("--sharing", choices=SHARING_MODES, default="layerwise",
                 help="Linformer sharing (layerwise: the paper's efficiency setting)")
  p.add_argument("--projection", choices=PROJECTIONS, default=None,
                 help="Linformer projection; None: the pretrain config's default")
  p.add_argument("--dropout", type=float, default=None,
                 help="dropout and attention dropout; None: the config's (0.1, as in training)")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--tokens_per_step", type=int, default=4096,
                 help="tokens per train step, the same for every n (batch = tokens / n)")
  p.add_argument("--attention", default="linformer,full",
                 help="attention kinds to run, comma separated")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  p.add_argument("--repeats", type=int, default=3, help="timed steps per cell (median)")
  p.add_argument("--peak_size", type=int, default=2048, help="matrix size of the peak matmul")
  p.add_argument("--peak_repeats", type=int, default=5, help="timed peak matmuls (best)")
  p.add_argument("--out", default=None,
                 help="CSV path; None: benchmarks/results/train_throughput_<platform>.csv")
  return p.parse_args(argv)


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
      positions = np.sort(np.stack([rng.choice(n, m, replace=False)
                                    for _ in range(per_host_batch_size)]), axis=1)
      positions = positions.astype(np.int32)
      targets = np.take_along_axis(ids, positions, axis=1)
      np.put_along_axis(ids, positions, MASK_ID, axis=1)
      self.batches.append(dict(
          input_ids=ids, attention_mask=np.ones((per_host_batch_size, n), np.int32),
          mlm_positions=positions, mlm_targets=targets,
          mlm_weights=np.ones((per_host_batch_size, m), np.float32)))

  def model_config(self) -> ModelConfig:
    return ModelConfig.from_dict({**self.config.model.to_dict(), "vocab_size": self.vocab_size})

  def train_iterator(self):
    return itertools.cycle(self.batches)

  def eval_batches(self):
    return list(self.batches)

  def eval_summary(self, outputs):
    return self.summarize(outputs)  # no unigram baseline without a dataset


# FLOP counting (see the module docstring).


def model_flops(cfg: ModelConfig, batch: int, n: int, m: int) -> dict[str, float]:
  """Matmul FLOPs of one training step (3 x forward), split by where they are spent."""
  b, t, hid, f, v = batch, batch * n, cfg.hidden_size, cfg.mlp_dim, cfg.vocab_size
  layers = {"qo_dense": 0.0, "kv_dense": 0.0, "mlp": 0.0, "seq_proj": 0.0, "attention": 0.0}
  for layer in range(cfg.num_layers):
    layers["qo_dense"] += 2 * (2 * t * hid * hid)
    layers["mlp"] += 2 * (2 * t * hid * f)
    if cfg.attention == "full":
      layers["kv_dense"] += 2 * (2 * t * hid * hid)
      layers["attention"] += 2 * (2 * b * n * n * hid)
      continue
    k = cfg.layer_ks[layer]
    windows = math.ceil(n / (cfg.max_len // k)) if cfg.projection in (
        "mean_pool", "max_pool", "conv") else k
    per_head = cfg.sharing == "none"
    linear = cfg.projection != "max_pool"
    inputs_first = not per_head and linear  # SelfAttention.__call__ -> _project_inputs_first
    if inputs_first:
      layers["kv_dense"] += 2 * (2 * b * windows * hid * hid)
    else:
      layers["kv_dense"] += 2 * (2 * t * hid * hid)
    if cfg.projection in ("learned", "random"):
      layers["seq_proj"] += 2 * (2 * b * k * n * hid)
      if inputs_first:
        layers["seq_proj"] += 2 * (2 * b * k * n)  # E applied to the all-ones (bias) column
    elif cfg.projection == "conv":
      layers["seq_proj"] += 2 * (2 * t * hid)
    layers["attention"] += 2 * (2 * b * n * windows * hid)
  head = {"mlm_head": 2 * b * m * hid * hid + 2 * b * m * hid * v}
  return {key: 3.0 * value for key, value in {**layers, **head}.items()}


# Timing.


def matmul_rate(size: int, repeats: int, dtype=jnp.float32) -> float:
  """Best FLOP/s of a jitted size x size x size matmul."""
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def make_config(attention: str, n: int, args):
  batch = args.tokens_per_step // n
  spec = f"size={args.size},n={n},k={args.k},attention={attention},batch={batch},steps=1000"
  if args.sharing:
    spec += f",sharing={args.sharing}"
  if args.projection:
    spec += f",projection={args.projection}"
  config = get_config(spec)
  for flag, field in (("layers", "num_layers"), ("hidden", "hidden_size"),
                      ("heads", "num_heads"), ("mlp", "mlp_dim")):
    if getattr(args, flag):
      config.model[field] = getattr(args, flag)
  if args.dropout is not None:
    config.model.dropout_rate = config.model.attention_dropout_rate = args.dropout
  config.model.dtype = args.dtype
  config.mesh.data = 1  # one device: partitioning.make_mesh({"data": 1, ...})
  return config


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
    mem = compiled.memory_analysis()
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = model_flops(cfg, config.batch_size, n, task.batches[0]["mlm_positions"].shape[1])
    info = dict(cfg=cfg, batch=config.batch_size, peak=peak, flops=flops,
                xla_flops=float(cost.get("flops", float("nan"))) if cost else None)
    limit = memory_limit()
    if limit is not None and peak > limit:
      return dict(info, status=f"OOM ({peak / MIB:.0f} MiB > {limit / MIB:.0f} MiB available)")

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

    for _ in range(args.warmup):
      step()
    return dict(info, status="ok", step=step, times=[])
  except Exception as e:  # noqa: BLE001 -- a failing cell is reported, the sweep goes on
    oom = "RESOURCE_EXHAUSTED" in str(e) or isinstance(e, MemoryError)
    return dict(status=("OOM" if oom else "error") + f": {type(e).__name__}: {str(e)[:300]}")


def time_interleaved(group: list[dict], repeats: int) -> None:
  for _ in range(repeats):
    for r in group:
      if "step" in r:
        try:
          r["times"].append(r["step"]())
        except Exception as e:  # noqa: BLE001
          r.pop("step")
          r["status"] = f"error: {type(e).__name__}: {str(e)[:300]}"
  for r in group:
    if r.pop("step", None) and r["times"]:
      r["step_s"] = statistics.median(r["times"])
    r.pop("state", None)


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
    step_s = r.get("step_s")
    tokens = args.tokens_per_step
    achieved = total / step_s if total and step_s else None
    cfg = r.get("cfg")
    out.append(dict(
        attention=r["attention"], n=r["n"], k=args.k if r["attention"] == "linformer" else None,
        batch=r.get("batch"), tokens_per_step=tokens,
        layers=cfg and cfg.num_layers, hidden=cfg and cfg.hidden_size,
        heads=cfg and cfg.num_heads, mlp=cfg and cfg.mlp_dim, vocab=cfg and cfg.vocab_size,
        sharing=cfg and (cfg.sharing if r["attention"] == "linformer" else None),
        projection=cfg and (cfg.projection if r["attention"] == "linformer" else None),
        dtype=args.dtype, dropout=cfg and cfg.dropout_rate,
        step_s=step_s, us_per_token=step_s and 1e6 * step_s / tokens,
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
    ))
  return out


def fmt(value, spec, missing="—", suffix=""):
  return missing if value is None else format(value, spec) + suffix


def markdown(rows: list[dict]) -> str:
  head = ("| attention | n | batch | step s | us/token | tokens/s | model GFLOP/step "
          "| XLA GFLOP/step | GFLOP/s | MFU | compiled MiB |")
  lines = [head, "|---|" + "---:|" * (head.count(" | "))]
  for r in rows:
    status = r["status"].split(":")[0].split(" (")[0]
    lines.append("| " + " | ".join([
        r["attention"] + (f" k={r['k']}" if r["k"] else ""), str(r["n"]), str(r["batch"]),
        fmt(r["step_s"], ".2f", status), fmt(r["us_per_token"], ".0f", status),
        fmt(r["tokens_per_s"], ".0f", status), fmt(r["model_gflop_per_step"], ".0f"),
        fmt(r["xla_gflop_per_step"], ".0f"), fmt(r["achieved_gflop_s"], ".1f", status),
        fmt(r["mfu"] and 100 * r["mfu"], ".1f", status, "%"),
        fmt(r["compiled_mib"], ".0f")]) + " |")
  return "\n".join(lines)


def checks(rows: list[dict]) -> list[str]:
  c = CHECKS
  lin = {r["n"]: r for r in rows if r["attention"] == "linformer" and r["k"] == c["k"]}
  small, large = lin.get(c["n_small"], {}), lin.get(c["n_large"], {})
  out = []
  head = f"Linformer (k={c['k']}) time per token n={c['n_large']} / n={c['n_small']}: "
  if small.get("us_per_token") and large.get("us_per_token"):
    ratio = large["us_per_token"] / small["us_per_token"]
    out.append(head + f"{ratio:.2f} (target <= {c['time_ratio']}) -> "
               f"{'PASS' if ratio <= c['time_ratio'] else 'FAIL'}")
  else:
    out.append(head + "not measured -> FAIL")
  head = f"Linformer MFU at n={c['n_large']}: "
  if large.get("mfu") is not None:
    out.append(head + f"{100 * large['mfu']:.1f}% (target >= {100 * c['mfu']:.0f}%) -> "
               f"{'PASS' if large['mfu'] >= c['mfu'] else 'FAIL'}")
  else:
    out.append(head + "not measured -> FAIL")
  return out


def main(argv=None) -> int:
  args = parse_args(argv)
  device = jax.devices()[0]
  print(f"JAX {jax.__version__} on {jax.default_backend()} ({device.device_kind}, "
        f"{os.cpu_count()} CPUs); {args.tokens_per_step} tokens/step, {args.dtype}, "
        f"median of {args.repeats} steps after {args.warmup} warm-up", flush=True)
  raw, before, after = run_sweep(args)
  peak = max(before, after)
  rows = finish(raw, peak, args)
  ok = next((r for r in rows if r["layers"]), None)
  if ok:
    lin = next((r for r in rows if r["attention"] == "linformer" and r["sharing"]), ok)
    print(f"\n### Train step, {ok['layers']} layers, hidden {ok['hidden']}, {ok['heads']} heads, "
          f"MLP {ok['mlp']}, vocab {ok['vocab']}, dropout {ok['dropout']}, {args.dtype}; "
          f"Linformer sharing={lin['sharing']}, projection={lin['projection']}\n")
  print("model FLOPs: matmuls only, forward + backward = 3 x forward, embeddings excluded, MLM "
        "head at the masked slots; XLA GFLOP = compiled cost analysis (all ops).")
  print(f"MFU = model GFLOP/s / measured {args.peak_size}^3 float32 matmul rate "
        f"{peak / 1e9:.1f} GFLOP/s (before {before / 1e9:.1f}, after {after / 1e9:.1f}).\n")
  print(markdown(rows))
  for r in rows:
    if r["status"] != "ok":
      print(f"n={r['n']} {r['attention']}: {r['status']}")
  path = Path(args.out or Path(__file__).parent / "results" /
              f"train_throughput_{jax.default_backend()}.csv")
  write_csv(rows, path)
  print(f"\nwrote {path}\n")
  print("\n".join(checks(rows)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
