"""The training loop end to end on the built-in corpus: learning, exact resume, sharding,
multi-process, divergence and bad input."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from linformer.config import ConfigError
from linformer.convert import names
from linformer.training import checkpointing, restore
from linformer.training.loop import train_and_evaluate
from linformer.training.meter import TrainingDiverged
from linformer.training.run_logs import read_metrics
from tests.helpers import small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def params_of(result):
  return jax.tree.map(np.asarray, result["state"].params)


def assert_same_gradients(a: str, b: str, rtol: float = 1e-5):
  """Two runs' gradient norms (before clipping, after normalising by the batch's predictions)
  agree at every step: unlike losses and Adam's updates, which a constant factor on the gradient
  leaves almost unchanged (Adam and clipping divide it out), the norm shows a wrong scale. The
  tolerance is float32 summation order over devices or micro-batches (1e-6 to 1e-5 relative
  here); a scale error is order 1."""
  norms = [[r["grad_norm"] for r in read_metrics(w, "train")] for w in (a, b)]
  assert len(norms[0]) == len(norms[1]) > 0
  np.testing.assert_allclose(norms[1], norms[0], rtol=rtol)


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """An uninterrupted 12-step run, the baseline of the resume tests."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  return workdir, train_and_evaluate(small_config(data_dir), workdir)


def test_loss_falls_and_outputs_are_written(reference):
  workdir, result = reference
  train = read_metrics(workdir, "train")
  assert [r["step"] for r in train] == list(range(1, 13))
  losses = [r["loss"] for r in train]
  # From ln(vocab) = 6.9 (uniform guess) it drops by ~0.4 in 12 steps; 0.25 is well clear of
  # batch-to-batch noise (~0.03 here).
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.25
  assert {"accuracy", "perplexity", "lr", "grad_norm", "tokens_per_sec", "mfu"} <= set(train[0])
  assert all(0 < r["mfu"] < 1 for r in train)
  ev = read_metrics(workdir, "eval")[-1]
  assert ev["step"] == 12 and ev["perplexity"] > 1 and ev["unigram_perplexity"] > 1
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.path.exists(os.path.join(workdir, "tokenizer"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "6"]
  # The 1000-id vocabulary's table has 1024 rows (vocab_multiple=128); the padding stays zero.
  params = params_of(result)
  assert params["encoder"]["embeddings"]["token"]["embedding"].shape == (1024, 64)
  np.testing.assert_array_equal(params["encoder"]["embeddings"]["token"]["embedding"][1000:], 0)
  np.testing.assert_array_equal(params["mlm_bias"][1000:], 0)
  # dtype='auto', the default, computed in float32 here (a CPU) and config.json says so.
  assert small_config("").model.dtype == "auto"
  assert checkpointing.load_config(workdir).model.dtype == "float32"


@pytest.mark.slow
def test_sharded_equals_unsharded(data_dir, pydocs_tokenizer, tmp_path):
  assert jax.device_count() == 8
  given = {"data.tokenizer": pydocs_tokenizer}
  one = train_and_evaluate(
    small_config(data_dir, num_train_steps=3, **given), str(tmp_path / "one")
  )
  cfg = small_config(data_dir, num_train_steps=3, **given)
  cfg.mesh.update(data=2, fsdp=2, tensor=2)
  eight = train_and_evaluate(cfg, str(tmp_path / "eight"))
  shardings = {len(x.sharding.device_set) for x in jax.tree.leaves(eight["state"].params)}
  assert shardings == {8}
  spec = eight["state"].params["encoder"]["layers"][0]["mlp_in"]["kernel"][...].sharding.spec
  assert tuple(spec) == ("fsdp", "tensor")
  a = [r["loss"] for r in read_metrics(str(tmp_path / "one"), "train")]
  b = [r["loss"] for r in read_metrics(str(tmp_path / "eight"), "train")]
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  assert_same_gradients(str(tmp_path / "one"), str(tmp_path / "eight"))
  for x, y in zip(jax.tree.leaves(params_of(one)), jax.tree.leaves(params_of(eight)), strict=True):
    np.testing.assert_allclose(y, x, atol=2e-5)  # every parameter after the 3 steps


TWO_PROCESS = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
import jax
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
sys.path.insert(0, os.getcwd())
from tests.helpers import small_config
from linformer.training.loop import train_and_evaluate
cfg = small_config(sys.argv[3], num_train_steps=3)
cfg.mesh.update(data=-1)
train_and_evaluate(cfg, sys.argv[4])
"""


@pytest.mark.slow
def test_two_processes_match_one(data_dir, tmp_path):
  single = str(tmp_path / "single")
  cfg = small_config(data_dir, num_train_steps=3)
  cfg.mesh.update(data=2)
  train_and_evaluate(cfg, single)
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  multi = str(tmp_path / "multi")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", TWO_PROCESS, f"localhost:{port}", str(i), data_dir, multi],
      cwd=ROOT,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
    )
    for i in range(2)
  ]
  for p in procs:
    _, err = p.communicate(timeout=400)
    assert p.returncode == 0, err.decode()[-3000:]
  a = [r["loss"] for r in read_metrics(single, "train")]
  b = [r["loss"] for r in read_metrics(multi, "train")]
  assert len(b) == 3
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  assert_same_gradients(single, multi)
  # Every parameter after the 3 steps, each run's last checkpoint restored onto this process's
  # devices (float32 summation order: 2e-5).
  params = [jax.tree.map(np.asarray, restore.restore_run(w)[2].params) for w in (single, multi)]
  for x, y in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1]), strict=True):
    np.testing.assert_allclose(y, x, atol=2e-5)
  # Read back without a target by one process (export.py, init_from of a run): no topology error.
  manager = checkpointing.make_manager(multi, None, create=False)
  raw = checkpointing.restore_raw(manager, manager.latest_step())["params"]
  values = lambda tree: sorted(np.asarray(x).ravel().tolist() for x in jax.tree.leaves(tree))
  assert values(raw) == values(params[1])


@pytest.mark.slow
def test_divergence_stops_and_keeps_last_good_checkpoint(data_dir, pydocs_tokenizer, tmp_path):
  # Warmup from 0 to an absurd rate: step 1 is fine (lr 0), step 2 overflows.
  cfg = small_config(
    data_dir, checkpoint_every_steps=1, log_every_steps=4, **{"data.tokenizer": pydocs_tokenizer}
  )
  cfg.optimizer.update(lr=1e30, warmup_steps=3)
  with pytest.raises(TrainingDiverged, match="diverged at step 2.*checkpoint \\(step 1\\)"):
    train_and_evaluate(cfg, str(tmp_path))
  manager = checkpointing.make_manager(str(tmp_path), cfg)
  assert manager.all_steps() == [1]


@pytest.mark.slow
def test_divergence_before_any_checkpoint_says_so(data_dir, pydocs_tokenizer, tmp_path):
  """Found at step 2 although metrics are fetched at step 12 only: the device kept the state of
  step 1 (a non-finite step changes nothing), and nothing was ever saved."""
  cfg = small_config(
    data_dir, checkpoint_every_steps=12, log_every_steps=12, **{"data.tokenizer": pydocs_tokenizer}
  )
  cfg.optimizer.update(lr=1e30, warmup_steps=3)
  with pytest.raises(TrainingDiverged, match="diverged at step 2.*No checkpoint had been written"):
    train_and_evaluate(cfg, str(tmp_path))
  assert not checkpointing.make_manager(str(tmp_path), cfg).all_steps()


@pytest.mark.parametrize(
  "overrides,message",
  [
    (dict(batch_size=12), "batch_size=12 must be divisible by .* data-parallel size 8"),
    (dict(**{"mesh.data": 16}), "needs 16 devices but only 8"),
    (dict(**{"model.max_len": 48, "model.k": 100}), "config.model.k=100"),
    (dict(**{"optimizer.schedule": "cyclic"}), "config.optimizer.schedule='cyclic'"),
    (dict(task="mt"), "config.task='mt': unknown task"),
  ],
)
def test_bad_config_errors_before_compiling(data_dir, tmp_path, overrides, message):
  cfg = small_config(data_dir, **overrides)
  if "batch_size" in overrides:
    cfg.mesh.update(data=8)
  with pytest.raises(ConfigError, match=message):
    train_and_evaluate(cfg, str(tmp_path))


def test_incompatible_workdir_names_the_fields(reference, data_dir):
  workdir, _ = reference
  cfg = small_config(data_dir)
  cfg.model.hidden_size = 32
  cfg.optimizer.lr = 1e-4
  with pytest.raises(
    ConfigError, match="model.hidden_size: workdir has 64, asked 32.*optimizer.lr"
  ):
    train_and_evaluate(cfg, workdir)


@pytest.mark.slow
def test_gradient_accumulation_matches_one_batch(data_dir, pydocs_tokenizer, tmp_path):
  """Two micro-batches of 8 give the update of one batch of 16 (dropout off: with dropout the
  micro-batches draw different masks by design)."""
  no_dropout = {
    "model.dropout_rate": 0.0,
    "model.attention_dropout_rate": 0.0,
    "num_train_steps": 2,
    "optimizer.warmup_steps": 1,
    "data.tokenizer": pydocs_tokenizer,
  }
  one = train_and_evaluate(small_config(data_dir, **no_dropout), str(tmp_path / "one"))
  two = train_and_evaluate(
    small_config(data_dir, grad_accum_steps=2, **no_dropout), str(tmp_path / "two")
  )
  assert_same_gradients(str(tmp_path / "one"), str(tmp_path / "two"))
  for x, y in zip(jax.tree.leaves(params_of(one)), jax.tree.leaves(params_of(two))):
    np.testing.assert_allclose(x, y, atol=2e-5)


@pytest.mark.slow
def test_init_from_a_run_continues_pretraining_with_its_weights(reference, data_dir, tmp_path):
  workdir, done = reference
  config = small_config(data_dir, init_from=workdir)
  result = train_and_evaluate(config, str(tmp_path), until_step=0)
  assert_trees_equal(params_of(result), params_of(done))
  assert int(result["state"].step) == 0  # a new run: fresh optimizer and schedule
  assert os.listdir(tmp_path / "tokenizer") == os.listdir(os.path.join(workdir, "tokenizer"))


@pytest.mark.slow
def test_a_run_starts_from_and_exports_the_other_layer_form(reference, data_dir, tmp_path):
  """A scanned run (layers stacked) starts from an unrolled run's checkpoint, reads back with
  the same per-layer parameters (what export and init_from see), and the unrolled run cannot
  be resumed as a scanned one: a one-line error naming the field."""
  workdir, done = reference
  scanned = str(tmp_path / "scanned")
  config = small_config(data_dir, init_from=workdir, **{"model.scan_layers": True})
  layers = params_of(train_and_evaluate(config, scanned, until_step=0))["encoder"]["layers"]
  unrolled = params_of(done)["encoder"]["layers"]
  for i in (0, 1):
    np.testing.assert_array_equal(layers["mlp_in"]["kernel"][i], unrolled[i]["mlp_in"]["kernel"])
  state = train_and_evaluate(config, scanned, until_step=1)["state"]  # one step, a checkpoint
  _, cfg, ours, _ = restore.run_params(scanned)
  stacked = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state.params)}
  expected = names.unstack_layers(stacked)
  assert cfg.scanned and set(expected) <= set(ours)
  for path, value in expected.items():
    np.testing.assert_array_equal(ours[path], value, err_msg=str(path))
  with pytest.raises(ConfigError, match="model.scan_layers: workdir has False, asked True"):
    train_and_evaluate(small_config(data_dir, **{"model.scan_layers": True}), workdir)


@pytest.mark.slow
def test_a_deeper_model_is_scanned_by_default_and_resumes(data_dir, pydocs_tokenizer, tmp_path):
  """scan_layers=None (the default) is recorded as what ran, so resuming with the same command
  compares True with True; 5 layers are scanned (more than 4)."""
  config = small_config(
    data_dir,
    num_train_steps=2,
    **{"model.num_layers": 5, "optimizer.warmup_steps": 1, "data.tokenizer": pydocs_tokenizer},
  )
  assert config.model.scan_layers is None
  train_and_evaluate(config, str(tmp_path), until_step=1)
  assert checkpointing.load_config(str(tmp_path)).model.scan_layers is True
  result = train_and_evaluate(config, str(tmp_path))
  assert int(result["state"].step) == 2
  assert result["state"].params["encoder"]["layers"]["mlp_in"]["kernel"].shape == (5, 64, 128)


@pytest.mark.slow
def test_eval_on_the_train_split(reference):
  workdir, _ = reference
  out = subprocess.run(
    [sys.executable, "eval.py", f"--workdir={workdir}", "--split=train", "--num_eval_steps=2"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  metrics = json.loads(out.stdout[out.stdout.index("{") :])
  assert metrics["step"] == 12 and metrics["train/perplexity"] > 1
  assert "train/unigram_perplexity" in metrics


@pytest.mark.slow
def test_a_config_saved_before_new_fields_still_resumes(reference, data_dir, tmp_path):
  """config.json of an older run lacks fields added since (they ran with the default)."""
  import shutil

  workdir = str(tmp_path / "old")
  shutil.copytree(reference[0], workdir)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    saved = json.load(f)
  del saved["model"]["projection_init"], saved["init_from"]
  with open(path, "w") as f:
    json.dump(saved, f)
  result = train_and_evaluate(small_config(data_dir), workdir)  # resumes at 12, nothing to do
  assert int(result["state"].step) == 12


def test_an_older_runs_config_reads_back_with_what_it_ran(tmp_path):
  """Fields added since a run was written read as the values it ran with (ADDED_FIELDS): an
  unpadded vocabulary table, dropout on the MLP's GELU, no transfer phase."""
  (tmp_path / "config.json").write_text(json.dumps({"model": {"vocab_size": 5}, "seed": 0}))
  config = checkpointing.load_config(str(tmp_path))
  assert config.model.vocab_multiple == 1 and config.model.activation_dropout_rate == 0.1
  assert config.transfer_steps == 0 and config.distill.alpha == 0.0 and config.seed == 0


def test_data_paths_stored_absolute(data_dir, tmp_path, monkeypatch):
  """Relative data paths are stored absolute, so eval.py of the run finds its files from any
  directory; a run saved with relative paths still resumes from where it was started."""
  from tests.helpers import finetune_config

  monkeypatch.chdir(tmp_path)
  config = finetune_config("sst2", data_dir)
  config.data.files.train = "data/train.tsv"
  config.data.tokenizer = "~/tok.json"
  absolute = checkpointing.absolute_data_paths(config)
  assert absolute.data.files.train == str(tmp_path / "data" / "train.tsv")
  assert absolute.data.files.validation == ""  # unset stays unset
  assert absolute.data.tokenizer == os.path.expanduser("~/tok.json")
  assert absolute.data.data_dir == data_dir and config.data.files.train == "data/train.tsv"

  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(config.to_json_best_effort())  # relative, as older runs
  (workdir / "checkpoints" / "2").mkdir(parents=True)
  checkpointing.check_or_write_config(str(workdir), absolute)  # same files: resumes
  assert json.loads((workdir / "config.json").read_text())["data"]["files"]["train"] == str(
    tmp_path / "data" / "train.tsv"
  )
  (tmp_path / "elsewhere").mkdir()
  monkeypatch.chdir(tmp_path / "elsewhere")
  moved = checkpointing.absolute_data_paths(config)  # the same relative path, other files
  with pytest.raises(checkpointing.ConfigError, match="data.files.train"):
    checkpointing.check_or_write_config(str(workdir), moved)


@pytest.mark.slow
def test_fill_mask_prints_candidates(reference):
  workdir, _ = reference
  out = subprocess.run(
    [
      sys.executable,
      "eval.py",
      f"--workdir={workdir}",
      "--fill_mask",
      "The <mask> module reads <mask> files.",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [line for line in out.stdout.splitlines() if line.startswith("position ")]
  assert len(lines) == 2
  probabilities = [float(x) for x in lines[0].split()[3::2]]
  assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
  assert 0 < sum(probabilities) <= 1.0001
