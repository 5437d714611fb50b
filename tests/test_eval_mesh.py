"""Evaluation on fewer devices than training: a checkpoint written on a 2x2x2 mesh of 8 devices
restores onto the devices of the evaluating machine (or onto `--mesh`) with the same loss."""

import json
import os
import subprocess
import sys

import pytest

from linformer.training.loop import train_and_evaluate
from linformer.training.restore import restore_run
from linformer.training.trainer import evaluate
from tests.helpers import small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_checkpoint_of_8_devices_evaluates_on_1(data_dir, pydocs_tokenizer, tmp_path):
  # The 8-device run of test_training.py's test_sharded_equals_unsharded (3 steps): its steps
  # come compiled from the session's compilation cache.
  given = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "data.tokenizer": pydocs_tokenizer}
  config = small_config(data_dir, num_train_steps=3, checkpoint_every_steps=3, **given)
  workdir = str(tmp_path / "run")
  expected = train_and_evaluate(config, workdir)["eval"]["loss"]  # on the 8 devices, step 3

  # One device, another process: the run's 2x2x2 mesh does not fit, so data=1.
  out = subprocess.run(
    [sys.executable, "eval.py", f"--workdir={workdir}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
  )
  assert out.returncode == 0, out.stderr[-3000:]
  metrics = json.loads(out.stdout[out.stdout.index("{") :])
  assert metrics["step"] == 3
  assert abs(metrics["loss"] - expected) < 1e-5

  # --mesh: one of the 8 devices here.
  _, trainer, state = restore_run(workdir, mesh={"data": 1, "fsdp": 1, "tensor": 1})
  assert trainer.mesh.devices.size == 1
  assert abs(evaluate(trainer, state, config.num_eval_steps)["loss"] - expected) < 1e-5
