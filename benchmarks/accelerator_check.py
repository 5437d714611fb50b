r"""One prepared accelerator check: everything worth knowing from one short call on one GPU.

    # On a machine with one NVIDIA GPU, from the repository root (under 8 minutes):
    pip install -r requirements.txt && pip install "jax[cuda12]==0.10.2"
    PYTHONPATH=. python benchmarks/accelerator_check.py            # again to continue
    # On a CPU, the same stages at tiny sizes (under 2 minutes):
    PYTHONPATH=. python benchmarks/accelerator_check.py --dry_run --out_dir=/tmp/acc

Stages, in order (each writes its result into the JSON as soon as it ends):

1. `environment`: device kind, JAX and jaxlib versions, the CUDA / cuDNN / driver versions that
   `jax._src.lib.cuda_versions` exposes, `jax.print_environment_info()` and `nvidia-smi`.
2. `cudnn_vs_xla`: the encoder (2 layers of RoBERTa-base widths, n = 512, k = 128) in bfloat16
   with `attention_impl='cudnn'` against `attention_impl='xla'`, same parameters and inputs (a
   batch with per-example padding), for full attention and for Linformer; compared on the real
   tokens. Skipped, with the reason, where there is no NVIDIA GPU.
3. `padding`: padding exactness on the device in float32 (matmuls at 'highest' precision, so
   that TF32 rounding is not mistaken for a leak): a sequence padded to longer lengths, and a
   batch of different lengths, give the unpadded outputs on the real tokens, max diff < 1e-5;
   full attention and every Linformer sharing x projection (three of them in --dry_run).
4. `scan_layers`: `benchmarks/scan_layers.py` at 12 layers of RoBERTa-base widths (n = 512,
   4096 tokens per step, bfloat16): the train step's trace and compile time, program size,
   compiled peak and step time with the layers unrolled and scanned (`config.model.scan_layers`).
5. `train_full`, `train_linformer`: `train.py` (the project's loop, `train_and_evaluate`) with
   `configs/pretrain.py:size=small` on the built-in pydocs corpus, bfloat16, cuDNN attention
   (attention dropout off: with it the model takes its explicit softmax path, not cuDNN),
   --train_steps steps; tokens/s and `mfu` (against the datasheet bf16 peak,
   `linformer.flops.peak_flops`) are read from the run's metrics.jsonl: the median of the log
   windows after the first (the first includes compiling). A run cut by its time share keeps
   its checkpoints, and the next call resumes it.
6. `table3`: `benchmarks/table3.py --preset gpu --resume` in the time left; its CSV is kept
   after every sequence length, so the next call continues where this one stopped.

Time. --time_budget (seconds, default 420) bounds the whole call: the checks stop starting cases
when it runs short, each training run gets at most --train_share of it (killed, with its process
group, at its share), and Table 3 gets what is left (it starts no new model in its last 90 s and
is killed 10 s before the end).

Outputs, in --out_dir (default benchmarks/results; with --dry_run runs/accelerator_check_dryrun,
which git ignores, so a dry run leaves no untracked files), named by the device (`nvidia_h200`):
accelerator_check_<device>.json (every stage with a `status`), accelerator_check_<device>.md (a
summary), table3_<device>.{csv,md,png}. A later call skips the stages whose status is ok, failed
or skipped (rerun them with --force) and continues the rest. --dry_run appends `_dryrun` to every
name, so it never overwrites real results. Training work directories (checkpoints, logs) go to
--work_dir (default runs/accelerator_check_<device>; a temporary directory in --dry_run).

Exit status: 0 when nothing failed (skipped and unfinished stages are not failures), 1 when a
check failed or a stage raised.

Code: this file is the CLI (flags, the call's JSON, the stages in order); the stages themselves,
with their tolerances, are functions of `accelerator_stages.py` beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

try:
  import linformer.config  # noqa: F401 -- the stages below need it: fail here, with the fix
except ImportError:  # the package is not installed and the root is not on the path
  sys.exit(
    "accelerator_check.py: cannot import linformer. Run it from the repository root as "
    "`PYTHONPATH=. python benchmarks/accelerator_check.py`, or `pip install -e .` first."
  )

# The sibling module (benchmarks/ is not a package; Python puts this script's directory first on
# the import path).
from accelerator_stages import (
  ROOT,
  STAGES,
  Clock,
  error_status,
  markdown,
  slug,
  stage_cudnn,
  stage_environment,
  stage_padding,
  stage_scan,
  stage_table3,
  stage_train,
  write_json,
)

RESULTS = ROOT / "benchmarks" / "results"
DRY_RUN_RESULTS = ROOT / "runs" / "accelerator_check_dryrun"  # in .gitignore's /runs/
# Statuses that are a result: a later call keeps them unless --force.
FINAL = ("ok", "failed", "skipped")


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
  )
  p.add_argument("--time_budget", type=float, default=420.0, help="seconds for the whole call")
  p.add_argument("--dry_run", action="store_true", help="tiny sizes for a CPU (under 2 minutes)")
  p.add_argument(
    "--out_dir", type=Path, default=None, help="where the results go (see the docstring)"
  )
  p.add_argument("--work_dir", type=Path, default=None, help="training runs (see the docstring)")
  p.add_argument("--force", action="store_true", help="rerun stages that already have a result")
  p.add_argument("--stages", default=",".join(STAGES), help="stages to run, comma separated")
  p.add_argument("--train_steps", type=int, default=None, help="default 300 (--dry_run: 6)")
  p.add_argument("--train_batch", type=int, default=None, help="default 256 (--dry_run: 4)")
  p.add_argument(
    "--train_share", type=float, default=0.25, help="fraction of the budget per training run"
  )
  p.add_argument("--num_workers", type=int, default=0, help="config.data.num_workers")
  args = p.parse_args(argv)
  unknown = sorted(set(args.stages.split(",")) - set(STAGES) - {""})
  if unknown:
    p.error(f"--stages: unknown {unknown}; use some of {list(STAGES)}")
  args.stages = [s for s in STAGES if s in args.stages.split(",")]
  args.train_steps = args.train_steps or (6 if args.dry_run else 300)
  args.train_batch = args.train_batch or (4 if args.dry_run else 256)
  if args.out_dir is None:
    args.out_dir = DRY_RUN_RESULTS if args.dry_run else RESULTS
  return args


def main(argv=None) -> int:
  # Before JAX starts its GPU client: allocate on demand, so that the training and Table 3
  # subprocesses find the GPU's memory free.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  args = parse_args(argv)
  clock = Clock(args.time_budget)
  import jax

  if jax.default_backend() == "cpu" and not args.dry_run:
    print(
      "accelerator_check.py: error: no accelerator here (JAX backend cpu); the full check "
      "would run for hours. Fix: run it on a GPU, or add --dry_run.",
      file=sys.stderr,
    )
    return 2
  device = jax.devices()[0].device_kind
  tag = slug(device) + ("_dryrun" if args.dry_run else "")
  json_path = args.out_dir / f"accelerator_check_{tag}.json"
  data = json.loads(json_path.read_text()) if json_path.exists() else {}
  data.update(device=device, dry_run=args.dry_run)
  data.setdefault("stages", {})
  data.setdefault("calls", [])
  call = dict(
    started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    time_budget_s=args.time_budget,
    argv=sys.argv[1:] if argv is None else list(argv),
    ran=[],
  )
  data["calls"].append(call)
  temp = None
  if args.work_dir:
    work_root = args.work_dir
  elif args.dry_run:
    work_root = Path(temp := tempfile.mkdtemp(prefix="accelerator_check_"))
  else:
    work_root = ROOT / "runs" / f"accelerator_check_{tag}"
  work_root.mkdir(parents=True, exist_ok=True)

  def save():
    call["wall_s"] = round(clock.elapsed(), 1)
    write_json(data, json_path)
    (args.out_dir / f"accelerator_check_{tag}.md").write_text(markdown(data))

  runners = dict(
    environment=lambda: stage_environment(args, clock),
    cudnn_vs_xla=lambda: stage_cudnn(args, clock),
    padding=lambda: stage_padding(args, clock),
    scan_layers=lambda: stage_scan(args, clock),
    train_full=lambda: stage_train("full", args, clock, work_root),
    train_linformer=lambda: stage_train("linformer", args, clock, work_root),
    table3=lambda: stage_table3(args, clock, f"table3_{tag}", work_root),
  )
  try:
    for name in args.stages:
      previous = data["stages"].get(name, {}).get("status", "")
      if name != "environment" and not args.force and previous.startswith(FINAL):
        print(f"== {name}: kept from an earlier call ({previous[:80]})", flush=True)
        continue
      print(f"== {name} (at {clock.elapsed():.0f} s of {args.time_budget:.0f})", flush=True)
      start = time.monotonic()
      try:
        result = runners[name]()
      except Exception as e:  # noqa: BLE001 -- one stage's error does not stop the others
        result = dict(status=error_status(e))
      result["stage_wall_s"] = round(time.monotonic() - start, 1)
      data["stages"][name] = result
      call["ran"].append(name)
      save()
      brief = {k: result[k] for k in ("max_diff", "tokens_per_s", "mfu") if k in result}
      print(f"   {name}: {result['status'][:200]} {brief or ''}", flush=True)
  finally:
    save()
    if temp:
      shutil.rmtree(temp, ignore_errors=True)
  print(f"\nwrote {json_path} ({clock.elapsed():.0f} s)\n")
  print(markdown(data))
  bad = [
    n for n, s in data["stages"].items() if s.get("status", "").startswith(("failed", "error"))
  ]
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
