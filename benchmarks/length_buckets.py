r"""Fine-tuning and evaluation with and without length buckets, side by side in one process.

    python benchmarks/length_buckets.py                       # SST-2 and IMDB lengths, n 128, 512
    python benchmarks/length_buckets.py --data sst2 --n 128 --attention linformer

What runs. The project's own fine-tuning train and eval steps (`make_trainer` of a
`configs/finetune.py` config, one device, float32, dropout 0.1 as in fine-tuning), fed the same
batches two ways: padded to n (`config.data.length_buckets='none'`, what every batch was before
buckets) and cut by the task's `fit_batch` to the smallest bucket holding their longest example
(`'auto'`: 16, 32, ... up to n). The batches are synthetic (random token ids; classification
does not care what the ids are), with the lengths of real data drawn from a log-normal fitted to
it: SST-2 train phrases (median 10 tokens, most under 40) and dev sentences (median 23), IMDB
reviews (median 230 word pieces, 12.5% over 400 words), each capped at n.

Every bucket's step is compiled and run once before timing (XLA compiles once per shape: the
count is printed). Then the two ways alternate over `--rounds` passes through the same batches,
each pass timed as a whole, so load from other processes hits both alike; the median pass gives
examples/s. Results go to benchmarks/results/length_buckets_<platform>.md.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from linformer.config import ModelConfig
from linformer.measure import write_report
from linformer.tasks.finetune import FinetuneTask
from linformer.training import partitioning
from linformer.training.trainer import make_trainer

RESULTS = Path(__file__).resolve().parent / "results"
# (median tokens, log-normal sigma) of each kind of data, special tokens included.
LENGTHS = {"sst2": (12, 0.7), "sst2_dev": (25, 0.45), "imdb": (300, 0.75)}
VOCAB = 8000


def finetune_config(arg: str):
  """configs/finetune.py's config. configs/ is not in the installed package, and finetune.py
  imports configs.pretrain, so the checkout's configs/ is registered as the package `configs`."""
  folder = Path(__file__).resolve().parents[1] / "configs"
  if "configs" not in sys.modules:
    spec = importlib.util.spec_from_file_location(
      "configs", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    sys.modules["configs"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["configs"])
  return importlib.import_module("configs.finetune").get_config(arg)


def lengths(data: str, count: int, n: int, seed: int = 0) -> np.ndarray:
  median, sigma = LENGTHS[data]
  drawn = np.random.default_rng(seed).lognormal(np.log(median), sigma, count)
  return np.clip(np.round(drawn), 3, n).astype(np.int32)


class SyntheticClassificationTask(FinetuneTask):
  """`FinetuneTask` on random batches of given lengths: no dataset, no tokenizer."""

  def __init__(self, config, sizes: np.ndarray):
    super().__init__(config)
    self.sizes = sizes

  def setup(self, workdir: str, per_host_batch_size: int, init_tokenizer=None) -> None:
    del workdir, init_tokenizer
    n, rng = self.config.model.max_len, np.random.default_rng(0)
    self.batches = []
    for start in range(0, len(self.sizes) - per_host_batch_size + 1, per_host_batch_size):
      size = self.sizes[start : start + per_host_batch_size]
      mask = (np.arange(n)[None] < size[:, None]).astype(np.int32)
      self.batches.append(
        dict(
          input_ids=rng.integers(5, VOCAB, (len(size), n), dtype=np.int32) * mask,
          attention_mask=mask,
          token_type_ids=np.zeros_like(mask),
          labels=rng.integers(0, 2, len(size)).astype(np.int32),
          weights=np.ones(len(size), np.float32),
        )
      )

  def model_config(self) -> ModelConfig:
    return ModelConfig.from_dict({**self.config.model.to_dict(), "vocab_size": VOCAB})


def train_pass(run: dict) -> None:
  """One train step on each batch (the state is donated and replaced)."""
  for batch in run["batches"]:
    run["state"], metrics = run["trainer"].train_step(run["state"], batch)
  jax.block_until_ready(metrics)


def eval_pass(run: dict) -> None:
  """One eval step on each batch."""
  trainer, state = run["trainer"], run["eval_state"]
  jax.block_until_ready([trainer.eval_step(state, batch) for batch in run["batches"]])


def measure(data: str, n: int, attention: str, args) -> dict:
  """Train and eval examples/s padded to n and bucketed, and the shapes compiled."""
  model = f"n={n},attention={attention}" + (f",k={n // 4}" if attention == "linformer" else "")
  config = finetune_config(f"dataset=sst2,size={args.size},{model},batch={args.batch}")
  config.model.dtype, config.mesh.data, config.num_train_steps = "float32", 1, 1000
  sizes = lengths(data, args.batches * args.batch, n)
  runs = {}
  for buckets in ("none", "auto"):
    config.data.length_buckets = buckets
    task = SyntheticClassificationTask(config, sizes)
    task.setup("", config.batch_size)
    trainer = make_trainer(config, task, partitioning.make_mesh(config.mesh))
    mesh = trainer.mesh
    batches = [partitioning.global_batch(task.fit_batch(b), mesh) for b in task.batches]
    init = jax.jit(trainer.init_state, out_shardings=trainer.state_sharding)
    run = dict(trainer=trainer, batches=batches, state=init(), eval_state=init(), times={})
    train_pass(run), eval_pass(run)  # compile every bucket met
    run["shapes"] = sorted({int(b["input_ids"].shape[1]) for b in batches})
    runs[buckets] = run
  for _ in range(args.rounds):
    for kind, one_pass in (("train", train_pass), ("eval", eval_pass)):
      for run in runs.values():
        start = time.perf_counter()
        one_pass(run)
        run["times"].setdefault(kind, []).append(time.perf_counter() - start)
  examples = args.batches * args.batch
  row = dict(data=data, n=n, attention=attention, shapes=runs["auto"]["shapes"])
  for kind in ("train", "eval"):
    for buckets, run in runs.items():
      row[f"{kind}_{buckets}"] = examples / statistics.median(run["times"][kind])
    row[f"{kind}_speedup"] = row[f"{kind}_auto"] / row[f"{kind}_none"]
  row["mean_length"] = float(sizes.mean())
  return row


def markdown(rows: list[dict], args) -> str:
  lines = [
    f"Length buckets, {jax.devices()[0].platform}: size={args.size}, batch {args.batch}, "
    f"{args.batches} batches, median of {args.rounds} interleaved passes (examples/s).",
    "",
    "| data (mean tokens) | n | attention | train: padded to n | bucketed | speed-up "
    "| eval: padded to n | bucketed | speed-up | bucket shapes compiled |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['data']} ({r['mean_length']:.0f}) | {r['n']} | {r['attention']} | "
      f"{r['train_none']:.1f} | {r['train_auto']:.1f} | **{r['train_speedup']:.2f}x** | "
      f"{r['eval_none']:.1f} | {r['eval_auto']:.1f} | **{r['eval_speedup']:.2f}x** | "
      f"{', '.join(map(str, r['shapes']))} |"
    )
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default="sst2,imdb", help=f"comma list of {sorted(LENGTHS)}")
  p.add_argument("--n", default="128,512", help="comma list of model lengths")
  p.add_argument("--attention", default="full,linformer", help="comma list: full, linformer")
  p.add_argument("--size", default="mini", help="configs/pretrain.py size")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--batches", type=int, default=8, help="batches per timed pass")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default=None, help="markdown; None: results/length_buckets_<platform>.md")
  args = p.parse_args(argv)
  bad = [d for d in args.data.split(",") if d not in LENGTHS]
  if bad:
    p.error(f"--data={args.data}: unknown {bad[0]!r}; use {sorted(LENGTHS)}")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  rows = []
  for data in args.data.split(","):
    for n in (int(v) for v in args.n.split(",")):
      for attention in args.attention.split(","):
        print(f"{data} n={n} {attention} ...", flush=True)
        rows.append(measure(data, n, attention, args))
  text = markdown(rows, args)
  out = Path(args.out) if args.out else RESULTS / f"length_buckets_{jax.devices()[0].platform}.md"
  write_report(text, out)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
