"""benchmarks/accelerator_check.py: its --dry_run end to end on this CPU, and the pieces the GPU
call relies on (the implementation comparison, the metrics summary, stage statuses), imported from
its stage module benchmarks/accelerator_stages.py."""

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from linformer.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "accelerator_check.py"

# benchmarks/ is not a package: its stage module is imported from that folder, appended (not
# prepended) so that no benchmark script's name shadows a module found elsewhere.
if str(ROOT / "benchmarks") not in sys.path:
  sys.path.append(str(ROOT / "benchmarks"))
acc = importlib.import_module("accelerator_stages")


def _run(*flags: str) -> subprocess.CompletedProcess:
  # As a user runs it: one device (conftest.py splits this CPU into 8 for the other tests).
  xla_flags = os.environ.get("XLA_FLAGS", "")
  env = dict(
    os.environ,
    XLA_FLAGS=xla_flags.replace("--xla_force_host_platform_device_count=8", ""),
    PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
  )
  proc = subprocess.run(
    [sys.executable, str(SCRIPT), *flags],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
    cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


@pytest.mark.slow
def test_dry_run_writes_every_stage_then_continues(tmp_path):
  _run("--dry_run", f"--out_dir={tmp_path}")
  data = json.loads((tmp_path / "accelerator_check_cpu_dryrun.json").read_text())
  stages = data["stages"]
  assert list(stages) == list(acc.STAGES)
  assert all(isinstance(s.get("status"), str) and s["status"] for s in stages.values())
  env = stages["environment"]
  assert env["status"] == "ok" and env["device_kind"] == "cpu" and env["jax"]
  assert stages["cudnn_vs_xla"]["status"].startswith("skipped: no NVIDIA GPU")
  padding = stages["padding"]
  assert padding["status"] == "ok" and 0.0 <= padding["max_diff"] < 1e-5
  assert {c["attention"] for c in padding["cases"]} == {"full", "linformer"}
  scan = stages["scan_layers"]
  assert scan["status"] == "ok" and scan["layers"] == 6
  assert scan["scanned"]["hlo_kb"] < scan["unrolled"]["hlo_kb"]  # one layer's program, not 6
  assert scan["compile_ratio"] > 0 and scan["step_ratio"] > 0
  for name in ("train_full", "train_linformer"):
    run = stages[name]
    assert run["status"] == "ok", run
    assert run["tokens_per_s"] > 0 and run["mfu"] > 0 and run["steps_done"] == 6
    assert run["dtype"] == "float32" and "eval" in run
  table3 = stages["table3"]
  assert table3["status"] == "ok" and table3["models_ok"] == 3  # full, Linformer, LSH
  assert (tmp_path / "table3_cpu_dryrun.csv").exists()
  assert "| padding | ok |" in (tmp_path / "accelerator_check_cpu_dryrun.md").read_text()

  # A second call keeps the finished stages (only the environment is read again).
  proc = _run("--dry_run", f"--out_dir={tmp_path}", "--stages=environment,padding,table3")
  assert "padding: kept from an earlier call" in proc.stdout
  again = json.loads((tmp_path / "accelerator_check_cpu_dryrun.json").read_text())
  assert [c["ran"] for c in again["calls"]][-1] == ["environment"]
  assert again["stages"]["padding"] == padding


@pytest.mark.slow
def test_compare_impls_on_this_cpu():
  """The GPU's cuDNN comparison, with XLA's default implementation standing in for cuDNN."""
  cfg = ModelConfig(
    **{**acc.CUDNN_MODEL, "max_len": 32, "hidden_size": 32, "num_heads": 4, "mlp_dim": 64, "k": 8}
  )
  for attention in ("full", "linformer"):
    out = acc.compare_impls(dataclasses.replace(cfg, attention=attention), [32, 9], impl=None)
    assert out["status"] == "ok" and out["rel_diff"] < 1e-6, out
    assert 0 < out["xla_bf16_rel_to_float32"] < acc.CUDNN_REL_TOL  # bf16's own rounding


def test_summarize_run_skips_the_compiling_window(tmp_path):
  lines = [
    dict(step=25, kind="train", loss=9.0, tokens_per_sec=10.0, mfu=0.01),
    dict(step=50, kind="train", loss=8.0, tokens_per_sec=100.0, mfu=0.4),
    dict(step=75, kind="train", loss=7.0, tokens_per_sec=120.0, mfu=0.5),
    dict(step=75, kind="eval", loss=7.5, perplexity=1800.0),
  ]
  text = "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 80, "ki'  # torn by a kill
  (tmp_path / "metrics.jsonl").write_text(text)
  out = acc.summarize_run(tmp_path)
  assert out["steps_done"] == 75 and out["tokens_per_s"] == 110.0 and out["mfu"] == 0.45
  assert out["first_window"]["tokens_per_s"] == 10.0
  assert out["loss_first"] == 9.0 and out["loss_last"] == 7.0
  assert out["eval"]["perplexity"] == 1800.0
  assert acc.summarize_run(tmp_path / "missing") == dict(steps_done=0, log_windows=0)


def test_stage_status_and_names():
  assert acc.overall(["ok", "ok"]) == "ok"
  assert acc.overall(["ok", "not run: time budget", "failed"]) == "failed (1 of 3 cases)"
  assert acc.overall(["error: x", "not run: t"]).startswith("error: x")
  assert acc.slug("NVIDIA H200") == "nvidia_h200" and acc.slug("TPU v5 lite") == "tpu_v5_lite"


def test_a_dry_run_writes_where_git_does_not_look():
  """Its results go under runs/ (ignored), never as untracked files in benchmarks/results."""
  cli = importlib.import_module("accelerator_check")
  dry, real = cli.parse_args(["--dry_run"]), cli.parse_args([])
  assert dry.out_dir == ROOT / "runs" / "accelerator_check_dryrun"
  assert real.out_dir == ROOT / "benchmarks" / "results"
  ignored = subprocess.run(
    ["git", "check-ignore", "-q", str(dry.out_dir / "accelerator_check_cpu_dryrun.json")], cwd=ROOT
  )
  assert ignored.returncode == 0
