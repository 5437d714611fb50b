"""Uptraining through the loop: `config.init_from` = a HuggingFace directory, the freeze phase,
longer n than the checkpoint, export and re-import, fine-tuning straight from a HF directory.

The HF directory is written by the project's own exporter from a random full-attention BERT
with a word-level tokenizer trained on pydocs (no torch, no hub); test_convert.py checks the
format against `transformers`.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import uptrain
from linformer.config import ConfigError
from linformer.convert.hf_import import import_params
from linformer.training import warm_start
from linformer.training.loop import train_and_evaluate
from tests.helpers import finetune_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def uptrain_config(hf_dir, data_dir, arg="n=64,k=16,steps=4,batch=4,freeze=2", **overrides):
  """configs/uptrain.py at test size: n=64 is twice the checkpoint's 32 positions."""
  config = uptrain.get_config(arg)
  config.init_from = hf_dir
  config.data.data_dir = data_dir
  config.mesh.data = 1
  config.update(
    num_eval_steps=1, eval_every_steps=100, log_every_steps=1, checkpoint_every_steps=1, **overrides
  )
  return config


def flat(params):
  return {
    warm_start.path_key(p): np.asarray(v)
    for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
  }


@pytest.mark.slow
# Per-layer E/F and the one module every layer shares. headwise and kv differ from none only in
# how many matrices a layer holds (tests/test_attention.py) and import and export as none does
# (tests/test_convert.py round-trips all four modes).
@pytest.mark.parametrize("sharing", ["none", "layerwise"])
def test_init_from_hf_trains_with_per_layer_and_shared_projections(
  sharing, hf_dir, data_dir, tmp_path
):
  config = uptrain_config(hf_dir, data_dir, f"n=64,k=16,steps=2,batch=4,freeze=1,sharing={sharing}")
  result = train_and_evaluate(config, str(tmp_path))
  assert int(result["state"].step) == 2 and np.isfinite(result["train"]["loss"])
  with open(tmp_path / "config.json") as f:
    model = json.load(f)["model"]
  assert (model["num_layers"], model["hidden_size"], model["max_len"]) == (2, 32, 64)
  with open(tmp_path / warm_start.RECORD_FILE) as f:
    record = json.load(f)
  assert "encoder/embeddings/token/embedding" in record["imported"]
  assert "mlm_dense/kernel" in record["imported"]  # the checkpoint's MLM head
  assert all("proj_" in name for name in record["new"]) and record["new"]


@pytest.fixture(scope="module")
def uptrained(hf_dir, data_dir, tmp_path_factory):
  """Two steps with the imported weights frozen, then two with everything training (the first
  at the warmup's rate 0)."""
  workdir = str(tmp_path_factory.mktemp("uptrained"))
  frozen = train_and_evaluate(uptrain_config(hf_dir, data_dir), workdir, until_step=2)
  done = train_and_evaluate(uptrain_config(hf_dir, data_dir), workdir)
  return workdir, flat(frozen["state"].params), flat(done["state"].params), done


@pytest.mark.slow
def test_freeze_phase_leaves_imported_weights_bit_identical(uptrained, hf_dir):
  workdir, frozen, done, result = uptrained
  values, report = import_params(hf_dir, result["trainer"].model_cfg)
  assert report.head_imported and report.positions == "extended"
  imported = [k for k in frozen if k in values]
  new = [k for k in frozen if k not in values]
  assert len(imported) > 20 and new and all("proj_" in "/".join(map(str, k)) for k in new)
  for key in imported:
    np.testing.assert_array_equal(frozen[key], values[key], err_msg=str(key))
  # The position table: the checkpoint's 32 rows, then the same 32 again.
  table = frozen[("encoder", "embeddings", "position", "embedding")]
  np.testing.assert_array_equal(table[32:], table[:32])
  # E/F trained during the freeze; after it (steps 3-4, resumed) the imported weights move too.
  assert all(not np.array_equal(frozen[k], done[k]) for k in imported if "position" not in k)


@pytest.mark.slow
def test_export_then_init_from_gives_identical_weights_and_outputs(
  uptrained, data_dir, hf_dir, tmp_path
):
  workdir, _, done, result = uptrained
  out = str(tmp_path / "exported")
  run = subprocess.run(
    [sys.executable, "export.py", f"--workdir={workdir}", f"--out={out}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(os.listdir(out))
  again = train_and_evaluate(
    uptrain_config(out, data_dir, freeze_pretrained_steps=0), str(tmp_path / "again"), until_step=0
  )
  reread = flat(again["state"].params)
  assert reread.keys() == done.keys()
  for key, value in done.items():
    np.testing.assert_array_equal(reread[key], value, err_msg=str(key))
  batch = next(iter(result["trainer"].task.eval_batches("validation")))
  losses = [
    np.asarray(r["trainer"].task.eval_outputs(r["trainer"].model(r["state"]), batch)["loss"])
    for r in (result, again)
  ]
  assert losses[0] == losses[1]


@pytest.mark.slow
def test_export_keeps_the_checkpoints_later_positions(hf_dir, data_dir, tmp_path):
  """A run at n = 16 from the 32-position BERT exports 32 positions: its own 16 as trained, then
  the checkpoint's rows 16-31 unchanged (the run never saw those positions)."""
  import export as export_cli
  from linformer.convert.hf_import import read_safetensors

  config = uptrain_config(hf_dir, data_dir, arg="n=16,k=4,steps=1,batch=4,freeze=0")
  done = flat(train_and_evaluate(config, str(tmp_path / "run"))["state"].params)
  out = str(tmp_path / "exported")
  assert export_cli.run(["export.py", f"--workdir={tmp_path / 'run'}", f"--out={out}"]) == 0
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["max_position_embeddings"] == 32  # a BERT: no offset rows
  name = "bert.embeddings.position_embeddings.weight"
  exported, source = read_safetensors(out)[name], read_safetensors(hf_dir)[name]
  ours = next(v for k, v in done.items() if k[-2:] == ("position", "embedding"))
  np.testing.assert_array_equal(exported[:16], ours)
  np.testing.assert_array_equal(exported[16:], source[16:])


@pytest.mark.slow
def test_fill_mask_on_an_uptrained_run_accepts_the_tokenizers_mask(uptrained):
  workdir = uptrained[0]
  out = subprocess.run(
    [
      sys.executable,
      "eval.py",
      f"--workdir={workdir}",
      "--fill_mask",
      "the json [MASK] can encode <mask> objects",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert len([line for line in out.stdout.splitlines() if line.startswith("position")]) == 2


@pytest.mark.slow
def test_finetune_straight_from_a_hf_directory(hf_dir, data_dir, tmp_path, capsys):
  """A Linformer fine-tuned from a BERT directory: E and F, new over the imported attention,
  start as mean pooling without a flag (projection_init='auto'), said at start and recorded."""
  config = finetune_config("sst2", data_dir, hf_dir)
  assert config.model.attention == "linformer" and config.model.projection_init == "auto"
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    result = train_and_evaluate(config, str(tmp_path))
  assert int(result["state"].step) == 2
  assert "they start as mean pooling" in capsys.readouterr().out
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["model"]["projection_init"] == "pool"
  with open(tmp_path / warm_start.RECORD_FILE) as f:
    record = json.load(f)
  assert all(name.startswith("encoder/") for name in record["imported"])
  assert "cls_out/kernel" in record["new"]


def test_uptrain_without_init_from_is_an_error(data_dir, tmp_path):
  config = uptrain_config("", data_dir)
  with pytest.raises(ConfigError, match="freeze_pretrained_steps=.*init_from is empty"):
    train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_init_from_a_directory_without_weights_is_an_error(hf_dir, data_dir, tmp_path):
  bare = tmp_path / "bare"
  bare.mkdir()
  (bare / "config.json").write_text(open(os.path.join(hf_dir, "config.json")).read())
  with pytest.raises(ConfigError, match="config.init_from=.*no model.safetensors"):
    train_and_evaluate(uptrain_config(str(bare), data_dir), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_pool_init_with_k_equal_n_is_the_imported_full_attention_model(hf_dir):
  """E/F as mean pooling over windows of n/k = 1 position are the identity: on full-length
  sequences (packed MLM blocks) the converted Linformer computes exactly what the checkpoint
  computes. (For k < n it attends to window means; a shorter sequence leaves k - length rows
  that hold no token, which full attention does not have.)"""
  import dataclasses

  from linformer.convert import hf_config
  from linformer.convert.hf_import import load_masked_lm

  base = hf_config.model_config_from_hf(hf_config.read_hf_config(hf_dir))
  base = dataclasses.replace(base, dropout_rate=0.0, attention_dropout_rate=0.0)
  ids = np.random.default_rng(0).integers(5, base.vocab_size, (2, base.max_len))
  mask = np.ones(ids.shape, bool)
  full = load_masked_lm(hf_dir, base)[0].encoder(ids, mask)
  linformer = dataclasses.replace(
    base, attention="linformer", k=base.max_len, projection_init="pool"
  )
  out = load_masked_lm(hf_dir, linformer)[0].encoder(ids, mask)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(full))
