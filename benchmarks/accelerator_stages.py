"""The stages of `benchmarks/accelerator_check.py`, and the helpers they share, as functions.

They live here rather than in the script so that the script (the CLI: its flags, the call's JSON,
the order of the stages), its --dry_run and `tests/test_accelerator_check.py` run one and the same
code, and the test imports it without executing the script. What each stage checks, its outputs
and its time bounds are described in the script's docstring; the tolerances, with their reasons,
are here.

Not a package: the script finds this module because Python puts a script's own directory first on
the import path; the test adds `benchmarks/` itself. Sections: shared helpers; the stages 1 to 5
(environment, cudnn_vs_xla, padding, scan_layers, train_full / train_linformer, table3), with
the subprocesses
bounded in time that the last two start; the result files (JSON, markdown summary).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from linformer.config import PROJECTIONS, SHARING_MODES, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
STAGES = (
  "environment",
  "cudnn_vs_xla",
  "padding",
  "scan_layers",
  "train_full",
  "train_linformer",
  "table3",
)

# bf16 tolerance of cuDNN against XLA. Both paths compute the same function in bfloat16 (8-bit
# mantissa, unit roundoff 2^-8 = 3.9e-3) but round in different places: cuDNN's flash kernel
# keeps the softmax statistics in float32 and rescales blocks online, XLA rounds the logits and
# probabilities to bfloat16 between ops. A few such roundings per layer, over 2 layers plus
# LayerNorm, give relative differences of about 1e-2; 2e-2 (about five roundings) passes that
# while a real fault (a wrong mask, scale or layout) gives relative errors of order 1.
CUDNN_REL_TOL = 2e-2
PAD_TOL = 1e-5  # float32 at 'highest' matmul precision: the tests' tolerance


class Clock:
  def __init__(self, budget: float):
    self.start, self.budget = time.monotonic(), budget

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def left(self) -> float:
    return self.budget - self.elapsed()


def slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "device"


def error_status(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return f"error: {type(e).__name__}: {lines[0][:300] if lines else ''}"


def overall(statuses: list[str]) -> str:
  """A stage's status from its cases': the first failure, else error, else not run, else ok."""
  for kind in ("failed", "error", "not run"):
    found = [s for s in statuses if s.startswith(kind)]
    if found:
      return f"{found[0]} ({len(found)} of {len(statuses)} cases)"
  return "ok"


def has_cudnn() -> tuple[bool, str]:
  import jax

  device = jax.devices()[0]
  if device.platform != "gpu" or "nvidia" not in device.device_kind.lower():
    return False, f"no NVIDIA GPU here (backend {jax.default_backend()}, {device.device_kind})"
  return True, ""


# ---------------------------------------------------------------------------------------------
# 1. Environment.


def stage_environment(args, clock) -> dict:
  import jax
  import jaxlib

  device = jax.devices()[0]
  out = dict(
    status="ok",
    device_kind=device.device_kind,
    platform=device.platform,
    backend=jax.default_backend(),
    device_count=jax.device_count(),
    jax=jax.__version__,
    jaxlib=getattr(jaxlib, "__version__", None),
    python=sys.version.split()[0],
  )
  try:
    from jax._src import lib as jax_lib

    module = getattr(jax_lib, "cuda_versions", None)
    versions = {}
    for name in sorted(dir(module) if module else []):
      if name.endswith("_version") and callable(getattr(module, name)):
        try:
          versions[name] = getattr(module, name)()
        except Exception as e:  # noqa: BLE001 -- a missing library is a fact to record
          versions[name] = error_status(e)
    out["cuda_versions"] = versions or "none (no CUDA plugin)"
  except Exception as e:  # noqa: BLE001
    out["cuda_versions"] = error_status(e)
  try:
    out["memory_stats"] = {
      key: value
      for key, value in (device.memory_stats() or {}).items()
      if key in ("bytes_limit", "bytes_in_use", "peak_bytes_in_use")
    }
  except Exception as e:  # noqa: BLE001
    out["memory_stats"] = error_status(e)
  try:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
      text = jax.print_environment_info(return_string=True)
    out["environment_info"] = text or buffer.getvalue()
  except Exception as e:  # noqa: BLE001
    out["environment_info"] = error_status(e)
  if shutil.which("nvidia-smi"):
    try:
      query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
      proc = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv"],
        capture_output=True,
        text=True,
        timeout=30,
      )
      out["nvidia_smi"] = proc.stdout.strip() or proc.stderr.strip()
    except Exception as e:  # noqa: BLE001
      out["nvidia_smi"] = error_status(e)
  from linformer import flops

  for dtype in ("bfloat16", "float32"):
    peak = flops.device_peak_flops(device, dtype)
    out[f"datasheet_peak_tflops_{dtype}"] = peak and peak / 1e12
  print(out.get("environment_info", ""))
  return out


# ---------------------------------------------------------------------------------------------
# 2. cuDNN against XLA in bfloat16.


def _lengths_batch(rng, vocab: int, n: int, lengths: list[int]):
  ids = rng.integers(5, vocab, size=(len(lengths), n)).astype(np.int32)
  mask = (np.arange(n)[None] < np.array(lengths)[:, None]).astype(np.int32)
  return ids, mask


CUDNN_MODEL = dict(
  vocab_size=1000,
  max_len=512,
  num_layers=2,
  hidden_size=768,
  num_heads=12,
  mlp_dim=3072,
  k=128,
  dropout_rate=0.0,
  attention_dropout_rate=0.0,
  dtype="bfloat16",
)


def compare_impls(cfg: ModelConfig, lengths: list[int], impl: str | None = "cudnn") -> dict:
  """The encoder under attention_impl=`impl` against 'xla', both in bfloat16 with the very same
  parameters and inputs (per-example padding: `lengths` real tokens), and both against a float32
  XLA run at 'highest' precision for scale; compared on the real tokens."""
  import dataclasses

  import jax
  from flax import nnx

  from linformer import measure
  from linformer.model import Encoder

  ids, mask = _lengths_batch(np.random.default_rng(0), cfg.vocab_size, cfg.max_len, lengths)
  real = mask.astype(bool)
  reference = Encoder(dataclasses.replace(cfg, attention_impl="xla"), rngs=nnx.Rngs(0))
  outs = []
  for impl_, dtype in (("xla", "bfloat16"), (impl, "bfloat16"), ("xla", "float32")):
    module = Encoder(dataclasses.replace(cfg, attention_impl=impl_, dtype=dtype), rngs=nnx.Rngs(0))
    nnx.update(module, nnx.state(reference))  # the very same parameters
    precise = dtype == "float32"  # true float32, not TF32
    with jax.default_matmul_precision("highest") if precise else contextlib.nullcontext():
      compiled, state = measure.compile_forward(module, (ids, mask))
      outs.append(np.asarray(compiled(state, ids, mask), np.float32)[real])
  ref, out, f32 = outs
  rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
  finite = bool(np.isfinite(out).all() and np.isfinite(ref).all())
  r = rel(out, ref)
  return dict(
    rel_diff=r,
    max_abs_diff=float(np.abs(out - ref).max()),
    impl_rel_to_float32=rel(out, f32),
    xla_bf16_rel_to_float32=rel(ref, f32),
    status="ok" if finite and r <= CUDNN_REL_TOL else "failed",
  )


def stage_cudnn(args, clock) -> dict:
  ok, reason = has_cudnn()
  if not ok:
    return dict(status=f"skipped: {reason}")
  lengths = [512, 300, 129, 17]
  cases = []
  for attention, sharing in (("full", "none"), ("linformer", "none"), ("linformer", "layerwise")):
    case = dict(attention=attention, sharing=sharing if attention == "linformer" else None)
    if clock.left() < 30:
      cases.append(dict(case, status="not run: time budget"))
      continue
    try:
      cfg = ModelConfig(**CUDNN_MODEL, attention=attention, sharing=sharing)
      cases.append(dict(case, **compare_impls(cfg, lengths, "cudnn")))
    except Exception as e:  # noqa: BLE001 -- a failing case is reported, the others go on
      cases.append(dict(case, status=error_status(e)))
  return dict(
    status=overall([c["status"] for c in cases]),
    tolerance=f"||cudnn - xla|| / ||xla|| <= {CUDNN_REL_TOL} on real tokens (bf16)",
    n=CUDNN_MODEL["max_len"],
    lengths=lengths,
    widths="2 layers, hidden 768, 12 heads, MLP 3072, k 128",
    cases=cases,
  )


# ---------------------------------------------------------------------------------------------
# 3. Padding exactness in float32 on the device.


PAD_MODEL = dict(
  vocab_size=97,
  max_len=64,
  num_layers=2,
  hidden_size=32,
  num_heads=4,
  mlp_dim=64,
  k=16,
  dropout_rate=0.0,
  attention_dropout_rate=0.0,
)


def padding_diff(cfg: ModelConfig, quick: bool = False) -> float:
  """Max |padded - unpadded| on the real tokens, as tests/test_attention.py checks it: one
  length-37 sequence padded (with random non-zero ids, so a leak would show) to longer lengths,
  then a batch of different lengths against each row run alone."""
  import jax
  from flax import nnx

  from linformer.model import Encoder

  graphdef, params = nnx.split(Encoder(cfg, rngs=nnx.Rngs(0)))
  forward = jax.jit(lambda p, ids, mask: nnx.merge(graphdef, p)(ids, mask))
  enc = lambda ids, mask: np.asarray(forward(params, ids, mask))  # one compile per shape
  rng = np.random.default_rng(0)
  diff = 0.0
  with jax.default_matmul_precision("highest"):
    length = 37  # not a multiple of the pooling window 64/16 = 4: a window is part padding
    ids = rng.integers(1, cfg.vocab_size, size=(2, length)).astype(np.int32)
    ref = enc(ids, np.ones_like(ids))
    for total in (41, 64) if quick else (38, 41, 64):
      pad = rng.integers(1, cfg.vocab_size, size=(2, total - length)).astype(np.int32)
      mask = (np.arange(total) < length).astype(np.int32)[None].repeat(2, 0)
      out = enc(np.concatenate([ids, pad], 1), mask)
      diff = max(diff, float(np.abs(out[:, :length] - ref).max()))
    lengths = [5, 64] if quick else [5, 16, 33, 64]
    batch, mask = _lengths_batch(rng, cfg.vocab_size, 64, lengths)
    out = enc(batch, mask)
    for i, m in enumerate(lengths):
      one = enc(batch[i : i + 1, :m], np.ones((1, m), np.int32))
      diff = max(diff, float(np.abs(out[i, :m] - one[0]).max()))
  return diff


def stage_padding(args, clock) -> dict:
  import jax

  if args.dry_run:
    combos = [("none", "full"), ("none", "learned"), ("layerwise", "mean_pool")]
  else:
    combos = [("none", "full")] + [(s, p) for s in SHARING_MODES for p in PROJECTIONS]
  cases, worst = [], 0.0
  for sharing, projection in combos:
    full = projection == "full"
    case = dict(
      attention="full" if full else "linformer",
      sharing=None if full else sharing,
      projection=None if full else projection,
    )
    if clock.left() < 20:
      cases.append(dict(case, status="not run: time budget"))
      continue
    try:
      if full:
        cfg = ModelConfig(**PAD_MODEL, attention="full")
      else:
        cfg = ModelConfig(**PAD_MODEL, sharing=sharing, projection=projection)
      diff = padding_diff(cfg, quick=args.dry_run)
      worst = max(worst, diff)
      cases.append(dict(case, max_diff=diff, status="ok" if diff < PAD_TOL else "failed"))
    except Exception as e:  # noqa: BLE001 -- a failing case is reported, the others go on
      cases.append(dict(case, status=error_status(e)))
  return dict(
    status=overall([c["status"] for c in cases]),
    max_diff=worst,
    tolerance=PAD_TOL,
    device=jax.devices()[0].device_kind,
    precision="float32, jax.default_matmul_precision('highest')",
    cases=cases,
  )


# ---------------------------------------------------------------------------------------------
# Subprocesses, bounded in time.


def _die_with_parent() -> None:
  """In the child: SIGTERM when this script dies (Linux), so that a killed check leaves no
  training or benchmark running on the device."""
  try:
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except Exception:  # noqa: BLE001 -- not Linux: the timeouts still bound the children
    pass


def run_bounded(cmd: list[str], timeout: float, log: Path, env: dict | None = None) -> dict:
  """Runs cmd from the repository root in its own process group, output to `log`; on timeout
  the whole group (the command's own workers included) is ended."""
  env = dict(os.environ, **(env or {}))
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
  log.parent.mkdir(parents=True, exist_ok=True)
  start = time.monotonic()
  with log.open("w") as f:
    proc = subprocess.Popen(
      cmd,
      stdout=f,
      stderr=subprocess.STDOUT,
      cwd=ROOT,
      env=env,
      start_new_session=True,
      preexec_fn=_die_with_parent,
    )
    try:
      rc = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
      rc = None
      os.killpg(proc.pid, signal.SIGTERM)
      try:
        proc.wait(timeout=20)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
  return dict(returncode=rc, timed_out=rc is None, wall_s=round(time.monotonic() - start, 1))


def log_tail(log: Path, chars: int = 2000) -> str:
  try:
    text = log.read_text(errors="replace")
  except OSError:
    return ""
  text = re.sub(r"\r[^\n]*(?=\r)", "", text)  # progress bars: keep each line's last state
  return text[-chars:]


# ---------------------------------------------------------------------------------------------
# 3b. Compile time of the layers scanned against unrolled.


def stage_scan(args, clock) -> dict:
  """`benchmarks/scan_layers.py` at 12 layers of RoBERTa-base widths (n = 512, 4096 tokens per
  step, bfloat16 on an accelerator): the train step compiled unrolled and scanned, then three
  steps of each timed interleaved."""
  import jax
  import scan_layers

  if clock.left() < 120:
    return dict(status="not run: time budget")
  accelerator = jax.default_backend() != "cpu"
  flags = (
    ["--layers=12", "--size=base", "--n=512", "--k=128", "--tokens_per_step=4096"]
    if not args.dry_run
    else ["--layers=6", "--size=tiny", "--n=64", "--k=16", "--tokens_per_step=256"]
  )
  flags += ["--dtype=" + ("bfloat16" if accelerator else "float32"), "--repeats=3"]
  bench = scan_layers.parse_args(flags)
  rows = scan_layers.measure(bench)
  unrolled, scanned = rows
  keys = ("lower_s", "compile_s", "hlo_kb", "peak_mib", "median_s")
  return dict(
    status="ok",
    command="benchmarks/scan_layers.py " + " ".join(flags),
    layers=bench.layers[0],
    unrolled={k: round(unrolled[k], 3) for k in keys if k in unrolled},
    scanned={k: round(scanned[k], 3) for k in keys if k in scanned},
    compile_ratio=scanned["compile_s"] / unrolled["compile_s"],
    step_ratio=scanned["median_s"] / unrolled["median_s"],
  )


# ---------------------------------------------------------------------------------------------
# 4. Training through the project's loop.


def train_command(attention: str, args, workdir: Path, cudnn: bool) -> list[str]:
  if args.dry_run:
    spec = f"size=tiny,n=64,k=16,attention={attention}"
    extra = [
      "--config.model.num_layers=1",
      "--config.model.hidden_size=32",
      "--config.model.num_heads=2",
      "--config.model.mlp_dim=64",
      "--config.data.vocab_size=1000",
      "--config.log_every_steps=2",
    ]
  else:
    spec, extra = f"size=small,attention={attention}", ["--config.log_every_steps=25"]
  spec += f",steps={args.train_steps},batch={args.train_batch}"
  model = (
    ["--config.model.dtype=bfloat16", "--config.model.attention_impl=cudnn"]
    if cudnn
    else ["--config.model.dtype=float32"]
  )
  return [
    sys.executable,
    str(ROOT / "train.py"),
    f"--config={ROOT / 'configs' / 'pretrain.py'}:{spec}",
    *model,
    "--config.model.attention_dropout_rate=0.0",  # else the explicit softmax path, not cuDNN
    *extra,
    f"--config.eval_every_steps={args.train_steps}",
    "--config.num_eval_steps=4",
    f"--config.checkpoint_every_steps={max(1, args.train_steps // 3)}",
    f"--config.data.num_workers={args.num_workers}",
    f"--workdir={workdir}",
  ]


def read_jsonl(path: Path) -> list[dict]:
  records = []
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        pass  # a line torn by a kill
  return records


def summarize_run(workdir: Path) -> dict:
  records = read_jsonl(workdir / "metrics.jsonl")
  train = [r for r in records if r.get("kind") == "train"]
  evals = [r for r in records if r.get("kind") == "eval"]
  out = dict(steps_done=train[-1]["step"] if train else 0, log_windows=len(train))
  if train:
    steady = train[1:] or train  # the first window includes compiling
    median = lambda key: statistics.median(float(r[key]) for r in steady if key in r)
    out.update(
      tokens_per_s=median("tokens_per_sec"),
      mfu=median("mfu") if any("mfu" in r for r in steady) else None,
      first_window=dict(
        step=train[0]["step"], tokens_per_s=train[0].get("tokens_per_sec"), mfu=train[0].get("mfu")
      ),
      loss_first=train[0].get("loss"),
      loss_last=train[-1].get("loss"),
      windows=[
        dict(step=r["step"], tokens_per_s=r.get("tokens_per_sec"), mfu=r.get("mfu")) for r in train
      ],
    )
  if evals:
    out["eval"] = {k: v for k, v in evals[-1].items() if k != "kind"}
  return out


def stage_train(attention: str, args, clock, work_root: Path) -> dict:
  import jax

  from linformer import flops

  cudnn, reason = has_cudnn()
  share = min(args.train_share * args.time_budget, clock.left() - 30)
  if share < 30:
    return dict(status="not run: time budget")
  workdir = work_root / f"train_{attention}"
  cmd = train_command(attention, args, workdir, cudnn)
  log = work_root / f"train_{attention}.log"
  print(f"[{attention}] {' '.join(cmd[1:])}\n  (at most {share:.0f} s)", flush=True)
  run = run_bounded(cmd, share, log)
  summary = summarize_run(workdir)
  dtype = "bfloat16" if cudnn else "float32"
  peak = flops.device_peak_flops(jax.devices()[0], dtype)
  out = dict(
    command=" ".join(cmd[1:]).replace(str(ROOT) + "/", ""),
    dtype=dtype,
    attention_impl="cudnn" if cudnn else f"default (XLA): {reason}",
    mfu_peak=f"datasheet {peak / 1e12:.1f} TFLOP/s ({dtype})" if peak else "measured matmul rate",
    workdir=str(workdir),
    **run,
    **summary,
  )
  if run["timed_out"]:
    out["status"] = (
      f"partial: stopped at its time share ({share:.0f} s) after step {summary['steps_done']} of "
      f"{args.train_steps}; the next call resumes from the last checkpoint"
    )
  elif run["returncode"] != 0:
    out["status"] = f"error: train.py exited with {run['returncode']}"
    out["log_tail"] = log_tail(log)
  elif summary.get("tokens_per_s") is None:
    out["status"] = "error: no train records in metrics.jsonl"
    out["log_tail"] = log_tail(log)
  else:
    out["status"] = "ok"
  return out


# ---------------------------------------------------------------------------------------------
# 5. Table 3.


def stage_table3(args, clock, name: str, work_root: Path) -> dict:
  import csv

  left = clock.left()
  if left < 60:
    return dict(status="not run: time budget")
  if args.dry_run:
    flags = ["--preset", "cpu", "--ns", "64", "--ks", "16", "--layers", "1"]
    flags += ["--memory_layers", "1", "--tokens", "64", "--repeats", "1", "--no-isolate"]
    flags += ["--lsh_rounds", "2"]  # one LSH model beside the two others
  else:
    flags = ["--preset", "gpu"]
  flags += ["--resume", "--time_budget", f"{max(left - 90, 1):.0f}", "--quiet"]
  flags += ["--out_dir", str(args.out_dir), "--name", name]
  cmd = [sys.executable, str(ROOT / "benchmarks" / "table3.py"), *flags]
  log = work_root / "table3.log"
  print(f"[table3] {' '.join(cmd[1:])}", flush=True)
  run = run_bounded(cmd, left - 10, log, env=dict(XLA_PYTHON_CLIENT_MEM_FRACTION="0.95"))
  csv_path = args.out_dir / f"{name}.csv"
  rows = list(csv.DictReader(csv_path.open())) if csv_path.exists() else []
  statuses = [r.get("status", "") for r in rows]
  left_over = sum(s.startswith("not run") for s in statuses)
  out = dict(
    command=" ".join(cmd[1:]).replace(str(ROOT) + "/", ""),
    **run,
    files=[
      f"{name}.{ext}" for ext in ("csv", "md", "png") if (args.out_dir / f"{name}.{ext}").exists()
    ],
    models=len(rows),
    models_ok=sum(s.startswith("ok") for s in statuses),
    models_not_run=left_over,
    ratios=[
      dict(
        n=int(r["n"]), k=int(r["k"]), speedup=r.get("speedup"), memory_saved=r.get("memory_saved")
      )
      for r in rows
      if r.get("model") == "linformer" and r.get("speedup")
    ],
  )
  if run["timed_out"] or left_over:
    out["status"] = "partial: time budget; the next call continues (--resume)"
  elif run["returncode"] != 0 or not rows:
    out["status"] = f"error: table3.py exited with {run['returncode']}"
    out["log_tail"] = log_tail(log)
  else:
    out["status"] = "ok"
  return out


# ---------------------------------------------------------------------------------------------
# Results.


def write_json(data: dict, path: Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
  tmp.replace(path)


def markdown(data: dict) -> str:
  stages = data["stages"]
  env = stages.get("environment", {})
  lines = [
    f"# Accelerator check: {data['device']}{' (dry run)' if data['dry_run'] else ''}",
    "",
    f"JAX {env.get('jax')}, jaxlib {env.get('jaxlib')}; CUDA versions: "
    f"{env.get('cuda_versions')}. Written by `benchmarks/accelerator_check.py`.",
    "",
    "| stage | status | result |",
    "|---|---|---|",
  ]
  for name in STAGES:
    s = stages.get(name)
    if s is None:
      continue
    result = ""
    if name == "cudnn_vs_xla" and s.get("cases"):
      result = "; ".join(
        f"{c['attention']}{'/' + c['sharing'] if c.get('sharing') else ''}: rel {c['rel_diff']:.2e}"
        for c in s["cases"]
        if "rel_diff" in c
      )
    elif name == "padding" and "max_diff" in s:
      result = f"max diff {s['max_diff']:.2e} over {len(s['cases'])} models (< {s['tolerance']})"
    elif name.startswith("train") and s.get("tokens_per_s"):
      mfu = s.get("mfu")
      result = (
        f"{s['steps_done']} steps, {s['tokens_per_s']:,.0f} tokens/s, "
        f"MFU {'-' if mfu is None else f'{100 * mfu:.1f}%'} ({s.get('dtype')}, "
        f"{s.get('attention_impl')}), loss {s['loss_first']:.3f} -> {s['loss_last']:.3f}"
      )
    elif name == "scan_layers" and "compile_ratio" in s:
      u, c = s["unrolled"], s["scanned"]
      result = (
        f"{s['layers']} layers: compile {u['compile_s']:.1f} s unrolled, {c['compile_s']:.1f} s "
        f"scanned ({s['compile_ratio']:.2f}x); step {s['step_ratio']:.2f}x"
      )
    elif name == "table3" and "models" in s:
      result = f"{s['models_ok']} of {s['models']} models measured; see {', '.join(s['files'])}"
    lines.append(f"| {name} | {s['status'][:120]} | {result} |")
  return "\n".join(lines) + "\n"
