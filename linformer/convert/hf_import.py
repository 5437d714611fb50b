"""BERT and RoBERTa checkpoints in HuggingFace format -> the project's full-attention `Encoder`.

    cfg, encoder, tokenizer = load_pretrained("path/to/hf_dir")
    hidden = encoder(ids, mask, token_type_ids)   # = BertModel(...).last_hidden_state

The directory holds `config.json`, `model.safetensors` (or a sharded `model.safetensors.index.json`
with its shards) and `tokenizer.json`. Weights are read with the `safetensors` numpy API: no torch.

Mapping (HF `nn.Linear` weights are (out, in); the project's kernels are (in, out)):

    embeddings.word_embeddings / position_embeddings / token_type_embeddings
                                          -> embeddings.token / position / token_type .embedding
    embeddings.LayerNorm                  -> embeddings.norm
    encoder.layer.i.attention.self.{query,key,value}
                                          -> layers[i].attention.{query,key,value}
                                             kernel W.T reshaped (hidden, heads, head_dim)
    encoder.layer.i.attention.output.dense -> layers[i].attention.out,
                                             kernel (heads, head_dim, hidden)
    encoder.layer.i.attention.output.LayerNorm -> layers[i].attention_norm
    encoder.layer.i.intermediate.dense     -> layers[i].mlp_in
    encoder.layer.i.output.dense           -> layers[i].mlp_out
    encoder.layer.i.output.LayerNorm       -> layers[i].mlp_norm

Both architectures are post-LN with the exact (erf) GELU (`hidden_act="gelu"`); `gelu_new` and
`gelu_pytorch_tanh` map to the tanh approximation. Tensors under a `bert.` / `roberta.` prefix (the
`*ForMaskedLM` etc. checkpoints) are found too.

RoBERTa positions. RoBERTa numbers positions from `padding_idx + 1` (= 2): a sequence's real tokens
have position ids 2, 3, ..., n+1 and its table has `max_position_embeddings` = max_len + 2 rows
(514 for 512 tokens). The project numbers positions 0..n-1, so the import drops the table's first
`padding_idx + 1` rows: project position p uses RoBERTa's row p + 2, and `max_len` =
max_position_embeddings - padding_idx - 1. Real tokens then get exactly RoBERTa's embeddings as
long as padding is on the right (real tokens first), which is how the project pads. (RoBERTa gives
padded tokens position `padding_idx`; those are masked out of attention here and there, so they do
not affect the real tokens.)

Not imported, on purpose: the `pooler` (BertModel's tanh head on [CLS]; not part of the hidden
states), task heads (`cls.*`, `lm_head.*`, `classifier.*`, `qa_outputs.*`) and the
`position_ids` / `token_type_ids` buffers. They are listed in `ImportReport.skipped`. Any other
tensor, and any tensor the encoder needs but the file lacks, is an `HFImportError` naming them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from linformer.config import ModelConfig
from linformer.data.tokenizer import Tokenizer
from linformer.model import Encoder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"

MODEL_TYPES = ("bert", "roberta")
_GELU = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": True}
# Tensors that are not part of the encoder's hidden states; skipped, never an error.
_SKIPPED = re.compile(
    r"^(embeddings\.position_ids|embeddings\.token_type_ids|pooler\..*|cls\..*|lm_head\..*"
    r"|classifier\..*|qa_outputs\..*)$")


class HFImportError(ValueError):
  """A checkpoint that cannot be imported; the message says what is wrong and what to do."""


@dataclasses.dataclass(frozen=True)
class ImportReport:
  """What `load_pretrained` did: the architecture and the tensors it did not use."""

  model_type: str
  skipped: tuple[str, ...]  # tensor names in the file that are not part of the encoder
  position_offset: int  # rows dropped from the position table (2 for RoBERTa, 0 for BERT)


def read_hf_config(path: str) -> dict:
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(file):
    raise FileNotFoundError(f"{path!r}: no {CONFIG_FILE}; expected a HuggingFace model directory "
                            f"with {CONFIG_FILE}, {WEIGHTS_FILE} and {TOKENIZER_FILE}.")
  with open(file) as f:
    return json.load(f)


def position_offset(hf: Mapping) -> int:
  """First position id the checkpoint uses: padding_idx + 1 for RoBERTa, 0 for BERT."""
  return int(hf.get("pad_token_id", 1)) + 1 if hf["model_type"] == "roberta" else 0


def model_config_from_hf(hf: Mapping, dtype: str = "float32") -> ModelConfig:
  """The full-attention `ModelConfig` of a BERT/RoBERTa config.json (checked)."""
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise HFImportError(
        f"config.json model_type={model_type!r}: only {MODEL_TYPES} checkpoints can be imported "
        "(post-LN encoders with absolute positions).")
  act = hf.get("hidden_act", "gelu")
  if act not in _GELU:
    raise HFImportError(f"config.json hidden_act={act!r}: the encoder uses GELU; supported "
                        f"{sorted(_GELU)}.")
  kind = hf.get("position_embedding_type", "absolute")
  if kind != "absolute":
    raise HFImportError(f"config.json position_embedding_type={kind!r}: only 'absolute' "
                        "position embeddings are supported.")
  if hf.get("is_decoder") or hf.get("add_cross_attention"):
    raise HFImportError("config.json describes a decoder (is_decoder / add_cross_attention): only "
                        "bidirectional encoders can be imported.")
  max_len = int(hf["max_position_embeddings"]) - position_offset(hf)
  return ModelConfig(
      vocab_size=int(hf["vocab_size"]),
      max_len=max_len,
      num_layers=int(hf["num_hidden_layers"]),
      hidden_size=int(hf["hidden_size"]),
      num_heads=int(hf["num_attention_heads"]),
      mlp_dim=int(hf["intermediate_size"]),
      attention="full",
      dropout_rate=float(hf.get("hidden_dropout_prob", 0.1)),
      attention_dropout_rate=float(hf.get("attention_probs_dropout_prob", 0.1)),
      pre_ln=False,
      layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
      type_vocab_size=int(hf.get("type_vocab_size", 2)),
      gelu_approximate=_GELU[act],
      dtype=dtype,
  )


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of `model.safetensors`, or of the shards a `.index.json` lists, as numpy."""
  from safetensors.numpy import load_file

  single = os.path.join(path, WEIGHTS_FILE)
  if os.path.exists(single):
    return load_file(single)
  index = os.path.join(path, WEIGHTS_INDEX_FILE)
  if os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    tensors = {}
    for shard in shards:
      tensors.update(load_file(os.path.join(path, shard)))
    return tensors
  raise FileNotFoundError(
      f"{path!r}: no {WEIGHTS_FILE} (nor {WEIGHTS_INDEX_FILE}). Convert a PyTorch checkpoint "
      "with `transformers` (model.save_pretrained(dir, safe_serialization=True)).")


def _strip_prefix(tensors: dict[str, np.ndarray], model_type: str) -> dict[str, np.ndarray]:
  """Drops a `bert.` / `roberta.` prefix (task-model checkpoints); renames old gamma/beta."""
  prefix = model_type + "."
  if any(name.startswith(prefix + "embeddings.") for name in tensors):
    tensors = {(n[len(prefix):] if n.startswith(prefix) else n): v for n, v in tensors.items()}
  renamed = {}
  for name, value in tensors.items():
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    renamed[re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)] = value
  return renamed


def _hf_to_project(cfg: ModelConfig, offset: int) -> dict[tuple, tuple[str, object]]:
  """Project parameter path -> (HF tensor name, transform of the HF array)."""
  h, d, c = cfg.num_heads, cfg.head_dim, cfg.hidden_size
  same = lambda a: a
  linear = lambda a: a.T  # (out, in) -> (in, out)
  qkv_kernel = lambda a: a.T.reshape(c, h, d)
  qkv_bias = lambda a: a.reshape(h, d)
  out_kernel = lambda a: a.T.reshape(h, d, c)
  positions = lambda a: a[offset:offset + cfg.max_len]
  m = {
      ("embeddings", "token", "embedding"): ("embeddings.word_embeddings.weight", same),
      ("embeddings", "position", "embedding"): ("embeddings.position_embeddings.weight",
                                                positions),
      ("embeddings", "norm", "scale"): ("embeddings.LayerNorm.weight", same),
      ("embeddings", "norm", "bias"): ("embeddings.LayerNorm.bias", same),
  }
  if cfg.type_vocab_size:
    m[("embeddings", "token_type", "embedding")] = ("embeddings.token_type_embeddings.weight",
                                                    same)
  for i in range(cfg.num_layers):
    hf = f"encoder.layer.{i}."
    for name in ("query", "key", "value"):
      m[("layers", i, "attention", name, "kernel")] = (hf + f"attention.self.{name}.weight",
                                                       qkv_kernel)
      m[("layers", i, "attention", name, "bias")] = (hf + f"attention.self.{name}.bias", qkv_bias)
    m[("layers", i, "attention", "out", "kernel")] = (hf + "attention.output.dense.weight",
                                                      out_kernel)
    m[("layers", i, "attention", "out", "bias")] = (hf + "attention.output.dense.bias", same)
    for ours, theirs in (("attention_norm", "attention.output.LayerNorm"),
                         ("mlp_norm", "output.LayerNorm")):
      m[("layers", i, ours, "scale")] = (hf + theirs + ".weight", same)
      m[("layers", i, ours, "bias")] = (hf + theirs + ".bias", same)
    m[("layers", i, "mlp_in", "kernel")] = (hf + "intermediate.dense.weight", linear)
    m[("layers", i, "mlp_in", "bias")] = (hf + "intermediate.dense.bias", same)
    m[("layers", i, "mlp_out", "kernel")] = (hf + "output.dense.weight", linear)
    m[("layers", i, "mlp_out", "bias")] = (hf + "output.dense.bias", same)
  return m


def _listing(names, limit=20) -> str:
  names = sorted(names)
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def encoder_from_tensors(cfg: ModelConfig, tensors: Mapping[str, np.ndarray], model_type: str,
                         offset: int = 0) -> tuple[Encoder, tuple[str, ...]]:
  """An `Encoder` holding the checkpoint's tensors; (encoder, skipped tensor names)."""
  tensors = _strip_prefix(dict(tensors), model_type)
  mapping = _hf_to_project(cfg, offset)
  needed = {name for name, _ in mapping.values()}
  missing = needed - set(tensors)
  skipped = tuple(sorted(n for n in set(tensors) - needed if _SKIPPED.match(n)))
  unexpected = set(tensors) - needed - set(skipped)
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing {len(missing)} tensor(s) the encoder needs: {_listing(missing)}")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected tensor(s): {_listing(unexpected)}")
    raise HFImportError(
        f"Checkpoint does not match a {model_type} encoder with {cfg.num_layers} layers "
        f"({'; '.join(parts)}). Check that config.json belongs to these weights.")

  abstract = nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  flat = []
  for path, var in nnx.to_flat_state(state):
    if path not in mapping:
      raise HFImportError(f"No checkpoint tensor maps to the encoder parameter {path} "
                          "(an Encoder this import does not know).")
    name, transform = mapping[path]
    source = tensors[name]
    try:
      value = np.asarray(transform(source), dtype=np.float32)
    except ValueError as e:
      raise HFImportError(f"{name} has shape {source.shape}, which does not fit the config "
                          f"({e}).") from e
    if value.shape != var.shape:
      raise HFImportError(
          f"{name} has shape {source.shape}, giving {value.shape} for {'.'.join(map(str, path))} "
          f"where the config needs {var.shape}. Check config.json against the weights.")
    flat.append((path, var.replace(jnp.asarray(value))))
  return nnx.merge(graphdef, nnx.from_flat_state(flat)), skipped


def load_pretrained(path: str, *, dtype: str = "float32", return_report: bool = False):
  """(ModelConfig, Encoder, Tokenizer) of a HuggingFace BERT or RoBERTa directory.

  The encoder has `attention='full'` and computes the checkpoint's last hidden states:
  `encoder(input_ids, attention_mask, token_type_ids)`. `dtype` is the computation dtype
  (parameters stay float32). With `return_report=True` an `ImportReport` is returned fourth.
  """
  hf = read_hf_config(path)
  cfg = model_config_from_hf(hf, dtype)
  offset = position_offset(hf)
  encoder, skipped = encoder_from_tensors(cfg, read_safetensors(path), hf["model_type"], offset)
  tok_file = os.path.join(path, TOKENIZER_FILE)
  if not os.path.exists(tok_file):
    raise FileNotFoundError(f"{path!r}: no {TOKENIZER_FILE}. Save it with the model's fast "
                            "tokenizer: AutoTokenizer.from_pretrained(...).save_pretrained(dir).")
  tokenizer = Tokenizer.load(tok_file)
  if tokenizer.vocab_size > cfg.vocab_size:
    raise HFImportError(f"{tok_file} has {tokenizer.vocab_size} ids but the embedding table has "
                        f"{cfg.vocab_size} rows: tokenizer and weights do not belong together.")
  if return_report:
    return cfg, encoder, tokenizer, ImportReport(hf["model_type"], skipped, offset)
  return cfg, encoder, tokenizer
