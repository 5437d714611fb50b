"""Fine-tuning through the training loop: every dataset end to end under TFDS mock data,
loading a pretrained encoder, best checkpoint, results.json, prediction and errors; the config
and its deprecated spellings."""

import json
import logging
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from configs import finetune
from linformer.config import ConfigError
from linformer.data.datasets import DATASETS, get_dataset_spec, spec_from_config
from linformer.training import checkpointing
from linformer.training.loop import train_and_evaluate
from tests.helpers import finetune_config, small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One dataset of each kind end to end (every dataset's pipeline is tested under mock data in
# test_classification_data.py): single text, pair with two eval splits (3 classes), regression,
# F1 + accuracy, Matthews correlation, long documents with head+tail truncation.
END_TO_END = ["sst2", "mnli", "stsb", "qqp", "cola", "imdb"]
assert set(END_TO_END) < set(DATASETS)


def mock_tfds(num_examples=10):
  """Random examples with the real builders' features (TFDS's mock; no download)."""
  return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


@pytest.fixture(scope="module")
def pretrained(data_dir, pydocs_tokenizer, tmp_path_factory):
  """A 4-step pretraining run on pydocs whose encoder the fine-tuning runs start from."""
  workdir = str(tmp_path_factory.mktemp("pretrained"))
  config = small_config(
    data_dir, num_train_steps=4, checkpoint_every_steps=4, **{"data.tokenizer": pydocs_tokenizer}
  )
  train_and_evaluate(config, workdir)
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("dataset", END_TO_END)
def test_dataset_trains_and_reports_every_metric(dataset, pretrained, data_dir, tmp_path):
  spec = DATASETS[dataset]
  with mock_tfds():
    result = train_and_evaluate(finetune_config(dataset, data_dir, pretrained), str(tmp_path))
  assert int(result["state"].step) == 2
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert results["main_metric"] == spec.main_metric
  last = results["evaluations"][-1]
  for split in spec.eval_split_names:
    for metric in spec.metrics:
      assert f"{split}/{metric}" in last
  assert results["best"]["step"] == 2
  assert checkpointing.make_manager(
    str(tmp_path), result["trainer"].task.config, checkpointing.BEST
  ).all_steps() == [2]


@pytest.mark.slow
def test_finetuning_with_buckets_equals_without(pretrained, data_dir, tmp_path):
  """Without dropout (whose masks are drawn per the batch's shape), a bucketed run's losses,
  evaluation and parameters equal the run padded to n, to float32 tolerance (1e-5)."""
  results = {}
  for buckets in ("none", "auto"):
    config = finetune_config(
      "sst2",
      data_dir,
      pretrained,
      **{
        "data.length_buckets": buckets,
        "model.dropout_rate": 0.0,
        "model.attention_dropout_rate": 0.0,
      },
    )
    with mock_tfds():
      results[buckets] = train_and_evaluate(config, str(tmp_path / buckets))
  none, auto = results["none"], results["auto"]
  task = auto["trainer"].task
  with mock_tfds():
    widths = {task.fit_batch(b)["input_ids"].shape[1] for b in task.eval_batches("validation")}
  assert min(widths) < 64, widths  # the batches were cut
  assert none["train"]["loss"] == pytest.approx(auto["train"]["loss"], abs=1e-5)
  for key, value in none["eval"].items():
    assert auto["eval"][key] == pytest.approx(value, abs=1e-5), key
  flat = lambda r: jax.tree.leaves(nnx.state(r["trainer"].model(r["state"])))
  for a, b in zip(flat(none), flat(auto), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.slow
def test_init_from_loads_the_encoder_exactly(pretrained, data_dir, tmp_path):
  with mock_tfds():
    result = train_and_evaluate(
      finetune_config("sst2", data_dir, pretrained), str(tmp_path), until_step=0
    )
  manager = checkpointing.make_manager(pretrained, result["trainer"].task.config)
  saved = checkpointing.restore_raw(manager, manager.latest_step())["params"]["encoder"]
  loaded = result["state"].params["encoder"]

  def flat(tree):  # path -> array, list indices and the Variable's `value` made uniform
    return {
      tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path): v
      for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }

  flat_saved = flat(saved)
  count = 0
  for key, value in flat(loaded).items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_saved[key]))
    count += 1
  assert count == len(flat_saved) > 20
  # The tokenizer came with it.
  assert os.listdir(tmp_path / "tokenizer") == os.listdir(os.path.join(pretrained, "tokenizer"))


@pytest.mark.slow
def test_predict_prints_a_label(pretrained, data_dir, tmp_path):
  with mock_tfds():
    train_and_evaluate(finetune_config("sst2", data_dir, pretrained), str(tmp_path))
  out = subprocess.run(
    [
      sys.executable,
      "eval.py",
      f"--workdir={tmp_path}",
      "--text",
      "a gripping, beautifully shot film",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  prediction = json.loads(out.stdout[out.stdout.index("{") :])
  assert prediction["label_name"] in ("negative", "positive")
  assert 0.5 <= prediction["probability"] <= 1.0


@pytest.mark.slow
def test_different_model_shape_is_an_error(pretrained, data_dir, tmp_path):
  config = finetune_config("sst2", data_dir, pretrained, **{"model.hidden_size": 32})
  with pytest.raises(ConfigError, match="different shape.*hidden_size: pretrained 64, asked 32"):
    train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_longer_n_than_pretrained_is_an_error(pretrained, data_dir, tmp_path):
  config = finetune_config("imdb", data_dir, pretrained, **{"model.max_len": 128})
  with pytest.raises(ConfigError, match="max_len: pretrained 64, asked 128"):
    train_and_evaluate(config, str(tmp_path))


def test_init_from_without_checkpoint_is_an_error(data_dir, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ConfigError, match="config.init_from=.*no run"):
    train_and_evaluate(finetune_config("sst2", data_dir, str(empty)), str(tmp_path / "run"))


def test_from_scratch_without_tokenizer_is_an_error(data_dir, tmp_path):
  with pytest.raises(ConfigError, match="needs a tokenizer"):
    train_and_evaluate(finetune_config("sst2", data_dir), str(tmp_path))


@pytest.mark.slow
def test_listops_from_scratch_learns_above_majority(data_dir, tmp_path):
  """The real (generated, offline) ListOps data: a tiny model trained from scratch beats the
  majority class clearly. `listops/short` has 10 classes, the largest 11.6% of examples."""
  config = finetune_config(
    "listops",
    data_dir,
    **{
      "data.listops_config": "short",
      "batch_size": 32,
      "num_train_steps": 300,
      "eval_every_steps": 300,
      "num_eval_steps": -1,
      "checkpoint_every_steps": 300,
      "log_every_steps": 50,
      "optimizer.lr": 1e-3,
      "optimizer.warmup_fraction": 0.05,
    },
  )
  result = train_and_evaluate(config, str(tmp_path))
  labels = np.concatenate(
    [b["labels"][b["weights"] > 0] for b in result["trainer"].task.eval_batches("validation")]
  )
  majority = np.bincount(labels).max() / len(labels)
  assert len(labels) == 500
  assert result["eval"]["validation/accuracy"] > majority + 0.08, (result["eval"], majority)


# The deprecated spellings of the dataset: `task=` and `config.data.task`.


def test_old_task_key_gives_the_same_config(caplog):
  with caplog.at_level(logging.WARNING):
    old = finetune.get_config("task=listops,size=tiny,n=64,k=16")
  assert "the config-string key task= is deprecated: use dataset=listops" in caplog.text
  new = finetune.get_config("dataset=listops,size=tiny,n=64,k=16")
  assert old.to_dict() == new.to_dict()
  assert old.data.dataset == "listops" and old.data.task is None
  with pytest.raises(ValueError, match="give dataset= only"):
    finetune.get_config("task=qnli,dataset=sst2")


def test_config_data_task_is_used_with_a_warning(caplog):
  config = finetune.get_config("dataset=sst2")
  config.data.task = "qnli"  # what --config.data.task=qnli does
  with caplog.at_level(logging.WARNING):
    assert spec_from_config(config.data) == get_dataset_spec("qnli")
  assert "config.data.task is deprecated: use config.data.dataset=qnli" in caplog.text
  # The config.json of a run made before the rename.
  assert spec_from_config(ml_collections.ConfigDict({"task": "mrpc"})).name == "mrpc"
