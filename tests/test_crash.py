"""Crashes: a run killed before its first checkpoint, then killed again while it saves, resumes
exactly, and its logs (metrics.jsonl, results.json, TensorBoard) hold each step once, in order."""

import glob
import json
import os
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import pretrain
from linformer.training import checkpointing
from linformer.training.loop import train_and_evaluate
from linformer.training.run_logs import read_metrics
from tests.helpers import small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(config, workdir):
  """train.py with the fields `config` changes from its config string, as flags."""
  arg = "size=tiny,n=64,k=16,steps=12,batch=16"
  flat = lambda c: checkpointing._flatten(json.loads(c.to_json_best_effort()))
  new, old = flat(config), flat(pretrain.get_config(arg))
  flags = [f"--config.{k}={v}" for k, v in new.items() if v != old.get(k)]
  script = [sys.executable, "train.py", f"--config=configs/pretrain.py:{arg}"]
  return script + [f"--workdir={workdir}", *flags]


def run_until(config, workdir, condition, timeout=240):
  """Starts train.py and SIGKILLs it as soon as `condition()` holds (asserted)."""
  proc = subprocess.Popen(
    command(config, workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
  )
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None and not condition():
    time.sleep(0.01)
  assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert condition(), "timed out before the moment to kill"


def tensorboard_steps(workdir, tag):
  """Steps of `tag` in the run's event files, in file order (TFRecord framing, no TensorFlow)."""
  from tensorboardX.proto import event_pb2

  steps = []
  for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[offset : offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
      offset += 12 + length + 4
      steps += [event.step for v in event.summary.value if v.tag == tag]
  return steps


@pytest.mark.slow
def test_kills_before_the_first_checkpoint_and_during_a_save(data_dir, pydocs_tokenizer, tmp_path):
  given = {"data.tokenizer": pydocs_tokenizer}  # the one each run would train: faster, the same
  config = small_config(data_dir, checkpoint_every_steps=3, eval_every_steps=2, **given)
  reference = train_and_evaluate(config, str(tmp_path / "reference"))
  workdir = str(tmp_path / "run")
  ckpt = os.path.join(workdir, "checkpoints")
  train_steps = lambda: [r["step"] for r in read_metrics(workdir, "train")]

  # 1. Killed after logging steps 1-2 (and an eval at 2), before the checkpoint at 3.
  late = small_config(data_dir, checkpoint_every_steps=12, eval_every_steps=2, **given)
  run_until(late, workdir, lambda: max(train_steps(), default=0) >= 2)
  assert not glob.glob(os.path.join(ckpt, "[0-9]*"))
  # 2. Rerun (the same config but for the checkpoint interval, which may change) and kill it
  #    while it writes a checkpoint after step 6: orbax's temporary directory is there.
  saving = lambda: (
    max(train_steps(), default=0) >= 6 and bool(glob.glob(os.path.join(ckpt, "*tmp*")))
  )
  run_until(config, workdir, saving)
  # 3. Resume to the end.
  resumed = train_and_evaluate(config, workdir)
  for a, b in zip(
    jax.tree.leaves(resumed["state"].params),
    jax.tree.leaves(reference["state"].params),
    strict=True,
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert train_steps() == list(range(1, 13))
  assert [r["step"] for r in read_metrics(workdir, "eval")] == list(range(2, 13, 2))
  with open(os.path.join(workdir, "results.json")) as f:
    assert [e["step"] for e in json.load(f)["evaluations"]] == list(range(2, 13, 2))
  assert tensorboard_steps(workdir, "train/loss") == list(range(1, 13))
  assert tensorboard_steps(workdir, "eval/perplexity") == list(range(2, 13, 2))
  losses = [r["loss"] for r in read_metrics(workdir, "train")]
  np.testing.assert_array_equal(
    losses, [r["loss"] for r in read_metrics(str(tmp_path / "reference"), "train")]
  )
