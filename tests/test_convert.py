"""Uptraining conversion: HF BERT/RoBERTa (MLM head included) -> any MaskedLM config, position
extension, and export -> import round trips that change no bit.

Tiny random `*ForMaskedLM` models are built and saved inside the tests (no hub); the comparisons
with `transformers` skip without torch/transformers.
"""

import dataclasses
import json
import os

import numpy as np
import pytest
from flax import nnx

from linformer.config import ModelConfig
from linformer.convert import export, names
from linformer.convert.hf_config import (
  HFImportError,
  config_for_checkpoint,
  model_config_from_hf,
  model_fields_from_hf,
  read_hf_config,
)
from linformer.convert.hf_import import (
  import_params,
  load_into,
  load_masked_lm,
  load_pretrained,
  read_safetensors,
)
from linformer.model import MaskedLM

# transformers is imported inside the tests, after this: everything is local, never the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 100
SPECIALS = {
  "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
  "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
}


def write_tokenizer(path, style, vocab_size=VOCAB):
  """A WordLevel tokenizer.json with BERT's or RoBERTa's special tokens at ids 0-4."""
  from tokenizers import Tokenizer as HFTokenizer
  from tokenizers import models, pre_tokenizers, processors

  specials = SPECIALS[style]
  vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(5, vocab_size)])}
  unk = specials[1] if style == "bert" else specials[3]
  tok = HFTokenizer(models.WordLevel(vocab, unk_token=unk))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(specials)
  if style == "bert":
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
  else:
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  tok.save(str(path))


def tiny_hf(path, kind):
  """A random 2-layer `*ForMaskedLM` saved in HF format, every parameter perturbed."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  common = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    attn_implementation="eager",
  )
  if kind == "bert":
    model = transformers.BertForMaskedLM(
      transformers.BertConfig(**common, max_position_embeddings=64, type_vocab_size=2)
    )
  else:
    model = transformers.RobertaForMaskedLM(
      transformers.RobertaConfig(
        **common, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5
      )
    )
  torch.manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.eval().save_pretrained(str(path), safe_serialization=True)
  write_tokenizer(path / "tokenizer.json", kind)
  return model


@pytest.fixture(scope="module", params=["bert", "roberta"])
def hf_model(request, tmp_path_factory):
  path = tmp_path_factory.mktemp(request.param)
  return request.param, path, tiny_hf(path, request.param)


def mlm_batch(kind, n, lengths, m=6, seed=0):
  """Right-padded ids (never a special id), mask, token types and m real positions per row."""
  rng = np.random.default_rng(seed)
  pad = 0 if kind == "bert" else 1
  ids = np.full((len(lengths), n), pad, np.int32)
  mask = np.zeros(ids.shape, bool)
  types = np.zeros(ids.shape, np.int32)
  positions = np.zeros((len(lengths), m), np.int32)
  for i, length in enumerate(lengths):
    ids[i, :length] = rng.integers(5, VOCAB, length)
    mask[i, :length] = True
    if kind == "bert":
      types[i, length // 2 : length] = 1
    positions[i] = rng.choice(length, m, replace=False)
  positions[0, 0] = lengths[0] - 1  # the last position of a full-length row
  return ids, mask, types, positions


def test_mlm_head_matches_transformers(hf_model):
  torch = pytest.importorskip("torch")
  kind, path, reference = hf_model
  cfg = model_config_from_hf(read_hf_config(str(path)))
  assert cfg.attention == "full" and cfg.max_len == 64
  model, report = load_masked_lm(str(path))
  assert report.head_imported and report.new == () and report.positions == "same"
  assert report.unused == () and report.notes == ()

  ids, mask, types, positions = mlm_batch(kind, 64, [64, 30, 7])
  with torch.no_grad():
    kwargs = dict(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
    )
    if kind == "bert":
      kwargs["token_type_ids"] = torch.tensor(types, dtype=torch.long)
    logits = reference(**kwargs).logits.numpy()
  want = np.take_along_axis(logits, positions[:, :, None], axis=1)
  got = np.asarray(model(ids, mask, positions, types if kind == "bert" else None))
  assert got.shape == want.shape == (3, 6, VOCAB)
  diff = np.abs(got - want).max()
  assert diff < 1e-4, diff


@pytest.mark.parametrize("max_len", [150, 40])
def test_positions_extend_by_copies_and_truncate(hf_model, max_len):
  kind, path, _ = hf_model
  offset = 2 if kind == "roberta" else 0
  table = read_safetensors(str(path))[f"{kind}.embeddings.position_embeddings.weight"][offset:]
  assert table.shape[0] == 64
  hf = read_hf_config(str(path))
  cfg = config_for_checkpoint(ModelConfig(max_len=max_len, k=8, sharing="kv"), hf)
  params, report = import_params(str(path), cfg)
  got = params[names.POSITIONS]
  assert got.shape == (max_len, 32)
  p = np.arange(max_len)
  np.testing.assert_array_equal(got, table[p % 64])  # original rows exact, then exact copies
  assert report.positions == ("extended" if max_len > 64 else "truncated")
  assert report.source_positions == 64 and report.head_imported
  proj = "encoder.layers.0.attention.proj_k.matrix"
  assert proj in report.new and "encoder.layers.1.attention.proj_k.matrix" in report.new
  assert all(n.endswith("proj_k.matrix") for n in report.new)
  # The Linformer MaskedLM runs with the imported weights and fresh projections.
  model = load_into(MaskedLM(cfg, rngs=nnx.Rngs(0)), params)
  ids, mask, types, positions = mlm_batch(kind, max_len, [max_len, 9])
  logits = np.asarray(model(ids, mask, positions, types if kind == "bert" else None))
  assert np.isfinite(logits).all()


def test_bert_model_checkpoint_without_head():
  """all-MiniLM-L6-v2 is a BertModel (no cls.*): the head is left fresh."""
  from tests.test_hf_import import minilm_dir

  path = minilm_dir()
  hf = read_hf_config(path)
  user = ModelConfig(max_len=1200, k=64, sharing="layerwise", dtype="bfloat16", dropout_rate=0.0)
  cfg = config_for_checkpoint(user, hf)
  assert (cfg.num_layers, cfg.hidden_size, cfg.vocab_size, cfg.layer_norm_eps) == (
    6,
    384,
    30522,
    1e-12,
  )
  assert (cfg.max_len, cfg.k, cfg.dtype, cfg.dropout_rate) == (1200, 64, "bfloat16", 0.0)
  params, report = import_params(path, cfg)
  assert not report.head_imported and report.positions == "extended"
  assert set(report.new) == {
    "mlm_bias",
    "mlm_dense.bias",
    "mlm_dense.kernel",
    "mlm_norm.bias",
    "mlm_norm.scale",
    "encoder.layers.0.attention.proj_k.matrix",
  }
  table = read_safetensors(path)["embeddings.position_embeddings.weight"]
  np.testing.assert_array_equal(params[names.POSITIONS][:512], table)
  np.testing.assert_array_equal(params[names.POSITIONS][512:1024], table)
  np.testing.assert_array_equal(params[names.POSITIONS][1024:], table[:176])


def test_fields_and_errors(hf_model, tmp_path):
  kind, path, _ = hf_model
  hf = read_hf_config(str(path))
  fields = model_fields_from_hf(hf)
  assert fields["hidden_size"] == 32 and fields["pre_ln"] is False
  with pytest.raises(HFImportError, match=r"hidden_size=32 \(config.model.hidden_size=64\)"):
    import_params(str(path), ModelConfig(**{**fields, "hidden_size": 64}, k=8, max_len=64))
  for change, match in [
    ({"is_decoder": True}, "decoder"),
    ({"hidden_act": "relu"}, "hidden_act"),
    ({"position_embedding_type": "relative_key"}, "position_embedding"),
  ]:
    with pytest.raises(HFImportError, match=match):
      model_fields_from_hf({**hf, **change})

  from safetensors.numpy import save_file

  tensors = read_safetensors(str(path))
  head = names.head_names(kind)
  cfg = model_config_from_hf(hf)
  cases = {
    "not tied": {
      **tensors,
      head["decoder"] + ".weight": tensors[f"{kind}.embeddings.word_embeddings.weight"] + 1,
    },
    "missing 1 tensor": {k: v for k, v in tensors.items() if k != head["norm"] + ".bias"},
    "unexpected tensor": {**tensors, "linformer.encoder.EF.matrix": np.zeros((2, 2))},
  }
  # A head whose bias is stored as the (tied) decoder bias only is still the head.
  bias_only = {k: v for k, v in tensors.items() if k != head["bias"]}
  bias_only[head["decoder"] + ".bias"] = tensors[head["bias"]]
  save_file(bias_only, str(tmp_path / "model.safetensors"))
  with open(tmp_path / "config.json", "w") as f:
    json.dump(hf, f)
  params, report = import_params(str(tmp_path), cfg)
  assert report.head_imported and report.new == ()
  bias = params[names.MLM_BIAS]  # vocab_size rows, then zero padding (vocab_multiple)
  assert bias.shape == (cfg.padded_vocab_size,) and cfg.padded_vocab_size > cfg.vocab_size
  np.testing.assert_array_equal(bias[: cfg.vocab_size], tensors[head["bias"]])
  np.testing.assert_array_equal(bias[cfg.vocab_size :], 0)

  for match, case in cases.items():
    save_file(
      {k: np.ascontiguousarray(v) for k, v in case.items()}, str(tmp_path / "model.safetensors")
    )
    with open(tmp_path / "config.json", "w") as f:
      json.dump(hf, f)
    with pytest.raises(HFImportError, match=match):
      import_params(str(tmp_path), cfg)


def random_params(cfg, seed=0):
  """Every variable of MaskedLM(cfg) (fixed projections too) set to random float32 values, but
  the vocabulary padding rows, which a MaskedLM keeps at zero."""
  rng = np.random.default_rng(seed)
  state = nnx.split(nnx.eval_shape(lambda: MaskedLM(cfg, rngs=nnx.Rngs(0))))[1]
  params = {p: rng.normal(size=v.shape).astype(np.float32) for p, v in nnx.to_flat_state(state)}
  for path in names.VOCAB_ROWS:
    params[path][cfg.vocab_size :] = 0
  return params


SMALL = dict(vocab_size=VOCAB, max_len=32, num_layers=2, hidden_size=16, num_heads=2, mlp_dim=32)
ROUND_TRIPS = {
  "none": (
    "bert",
    dict(sharing="none", projection="learned", k=8, type_vocab_size=2),
    [
      "linformer.encoder.layer.1.attention.E.matrix",
      "linformer.encoder.layer.1.attention.F.matrix",
    ],
  ),
  "layerwise": (
    "roberta",
    dict(sharing="layerwise", projection="random", k=8, pre_ln=True),
    ["linformer.encoder.EF.matrix", "linformer.encoder.final_norm.weight"],
  ),
  "kv": (
    "bert",
    dict(sharing="kv", projection="conv", k=(8, 4), gelu_approximate=True),
    ["linformer.encoder.layer.1.attention.EF.kernel"],
  ),
  "headwise": (
    "roberta",
    dict(sharing="headwise", projection="learned", k=4, type_vocab_size=1, dtype="bfloat16"),
    ["linformer.encoder.layer.0.attention.F.matrix"],
  ),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_export_import_round_trip_is_exact(case, tmp_path):
  model_type, fields, expected_names = ROUND_TRIPS[case]
  cfg = ModelConfig(**SMALL, **fields)
  params = random_params(cfg)
  write_tokenizer(tmp_path / "run_tokenizer" / "tokenizer.json", model_type)
  out = str(tmp_path / "exported")
  config = export.export_dir(
    out, params, cfg, model_type, tokenizer_dir=str(tmp_path / "run_tokenizer")
  )
  assert config["linformer"]["transformers_load"]  # a Linformer: transformers would miss E/F
  tensors = read_safetensors(out)
  assert set(expected_names) <= set(tensors)
  assert all(
    name in tensors
    for name in (
      f"{model_type}.embeddings.word_embeddings.weight",
      names.head_names(model_type)["bias"],
    )
  )

  hf = read_hf_config(out)
  assert model_config_from_hf(hf) == cfg  # the Linformer fields come back
  back, report = import_params(out, cfg)
  assert report.exported and report.head_imported and report.new == ()
  assert set(back) == set(params)
  for path, value in params.items():
    assert back[path].dtype == np.float32
    np.testing.assert_array_equal(back[path], value, err_msg=str(path))  # zero difference

  # Another n and k: the checkpoint's E/F do not fit and stay fresh; positions are copied.
  other = dataclasses.replace(cfg, max_len=64, k=tuple(2 * k for k in cfg.layer_ks))
  back, report = import_params(out, other)
  assert report.positions == "extended" and report.notes
  assert report.new and all(".proj_" in n for n in report.new)
  assert all(
    n.startswith("linformer.encoder.")
    for n in report.unused
    if n.startswith("linformer.") and "final_norm" not in n
  )

  loaded_cfg, encoder, tokenizer = load_pretrained(out, dtype=cfg.dtype)
  assert loaded_cfg == cfg and tokenizer.pad_id == (0 if model_type == "bert" else 1)
  flat = dict(nnx.to_flat_state(nnx.split(encoder)[1]))
  for path, var in flat.items():
    np.testing.assert_array_equal(np.asarray(var.get_value()), params[("encoder",) + path])


def test_export_of_a_classifier_says_transformers_drops_its_head(tmp_path):
  """A fine-tuned classifier's head has no HF name here: it is kept under linformer.tree.* (read
  back exactly) and config.json's notes say transformers would start a new classifier."""
  from linformer.model import SequenceClassifier

  cfg = ModelConfig(**SMALL, attention="full")
  rng = np.random.default_rng(0)
  state = nnx.split(nnx.eval_shape(lambda: SequenceClassifier(cfg, 2, rngs=nnx.Rngs(0))))[1]
  params = {p: rng.normal(size=v.shape).astype(np.float32) for p, v in nnx.to_flat_state(state)}
  params[("encoder", *names.VOCAB_ROWS[0][1:])][VOCAB:] = 0
  write_tokenizer(tmp_path / "tok" / "tokenizer.json", "roberta")
  config = export.export_dir(
    str(tmp_path / "out"), params, cfg, "roberta", tokenizer_dir=str(tmp_path / "tok")
  )
  notes = config["linformer"]["transformers_load"]
  assert len(notes) == 1 and "AutoModelForSequenceClassification" in notes[0]
  assert any(
    name.startswith("linformer.tree.cls_out") for name in read_safetensors(str(tmp_path / "out"))
  )


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_full_attention_export_loads_in_transformers(model_type, tmp_path):
  """A post-LN full-attention model exported is exact in transformers: the names are right."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg = ModelConfig(**SMALL, attention="full", type_vocab_size=2 if model_type == "bert" else 0)
  params = {p: v * (0.1 if v.ndim > 1 else 1.0) for p, v in random_params(cfg, 1).items()}
  write_tokenizer(tmp_path / "tok" / "tokenizer.json", model_type)
  out = str(tmp_path / "exported")
  config = export.export_dir(out, params, cfg, model_type, tokenizer_dir=str(tmp_path / "tok"))
  assert config["linformer"]["transformers_load"] == []
  auto = transformers.AutoModelForMaskedLM
  reference, info = auto.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  model = load_into(MaskedLM(cfg, rngs=nnx.Rngs(0)), params)
  ids, mask, types, positions = mlm_batch(model_type, 32, [32, 9])
  with torch.no_grad():
    kwargs = dict(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
    )
    if model_type == "bert":
      kwargs["token_type_ids"] = torch.tensor(types, dtype=torch.long)
    logits = reference.eval()(**kwargs).logits.numpy()
  want = np.take_along_axis(logits, positions[:, :, None], axis=1)
  got = np.asarray(model(ids, mask, positions, types if model_type == "bert" else None))
  diff = np.abs(got - want).max()
  assert diff < 1e-4, diff


def test_vocabulary_rows_resize_between_multiples():
  """A run saved with another config.model.vocab_multiple differs only in zero padding rows, so
  a warm start pads or cuts them; cutting a real (nonzero) row is an error."""
  table = np.arange(12.0).reshape(6, 2)
  table[4:] = 0  # 4 ids padded to 6 rows
  np.testing.assert_array_equal(names.resize_vocab_rows(table, names.WORDS, 8)[:6], table)
  np.testing.assert_array_equal(names.resize_vocab_rows(table, names.WORDS, 8)[6:], 0)
  np.testing.assert_array_equal(names.resize_vocab_rows(table, names.WORDS, 4), table[:4])
  with pytest.raises(ValueError, match="rows 3.. are not padding"):
    names.resize_vocab_rows(table, names.WORDS, 3)
  other = ("encoder", "embeddings", "position", "embedding")
  assert names.resize_vocab_rows(table, other, 8) is table  # only vocabulary rows resize
