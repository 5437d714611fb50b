"""A HuggingFace BERT or RoBERTa config.json -> the project's `ModelConfig`.

    hf = read_hf_config("path/to/hf_dir")
    cfg = model_config_from_hf(hf)  # the checkpoint's own model: full attention at its length
    cfg = config_for_checkpoint(user_cfg, hf)  # any target config with the checkpoint's widths

A checkpoint fixes the `CHECKPOINT_FIELDS` (vocabulary, layers, widths, heads, MLP, token types,
LayerNorm eps, GELU variant, post-LN); attention, k, sharing, projection, max_len, dropout and
dtype stay the user's choice. Only `MODEL_TYPES` encoders with absolute position embeddings and a
GELU `hidden_act` are accepted (no decoders); anything else is an `HFImportError`, the error the
weight import (`linformer.convert.hf_import`) raises too. The file names of a HF model directory
(`CONFIG_FILE`, `WEIGHTS_FILE`, `WEIGHTS_INDEX_FILE`, `TOKENIZER_FILE`) are defined here.

Both architectures are post-LN with the exact (erf) GELU (`hidden_act="gelu"`); `gelu_new`,
`gelu_pytorch_tanh` and `gelu_fast` map to the tanh approximation (`gelu_approximate=True`).

RoBERTa numbers positions from `padding_idx + 1` (= 2, `position_offset`), so its
`max_position_embeddings` is max_len + 2 (514 for 512 tokens): the checkpoint's own `max_len` is
`max_position_embeddings - position_offset`. (The weight import drops those first rows of the
position table.)

Directories written by `linformer.convert.export` carry the project's model fields under the
`linformer` key of config.json; `saved_model_config` reads them back, and they then take the place
of the HF fields (Linformer attention, k, pre-LN, ... included).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from linformer.config import ConfigError, ModelConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"

MODEL_TYPES = ("bert", "roberta")
_GELU = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True, "gelu_fast": True}
# ModelConfig fields a checkpoint fixes; the rest (attention, k, max_len, dropout, ...) are the
# user's choice.
CHECKPOINT_FIELDS = (
  "vocab_size",
  "num_layers",
  "hidden_size",
  "num_heads",
  "mlp_dim",
  "type_vocab_size",
  "layer_norm_eps",
  "gelu_approximate",
  "pre_ln",
)


class HFImportError(ValueError):
  """A checkpoint that cannot be imported; the message says what is wrong and what to do."""


def read_hf_config(path: str) -> dict:
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(file):
    raise FileNotFoundError(
      f"{path!r}: no {CONFIG_FILE}; expected a HuggingFace model directory "
      f"with {CONFIG_FILE}, {WEIGHTS_FILE} and {TOKENIZER_FILE}."
    )
  with open(file) as f:
    return json.load(f)


def position_offset(hf: Mapping) -> int:
  """First position id the checkpoint uses: padding_idx + 1 for RoBERTa, 0 for BERT."""
  return int(hf.get("pad_token_id", 1)) + 1 if hf["model_type"] == "roberta" else 0


def saved_model_config(hf: Mapping) -> ModelConfig | None:
  """The project's `ModelConfig` stored by `export` under config.json's `linformer` key."""
  block = hf.get("linformer")
  if block is None:
    return None
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  try:
    return ModelConfig.from_dict({k: v for k, v in block.items() if k in known})
  except (ConfigError, TypeError) as e:
    raise HFImportError(f"config.json linformer: not a valid model config ({e}).") from e


def _check_supported(hf: Mapping) -> None:
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise HFImportError(
      f"config.json model_type={model_type!r}: only {MODEL_TYPES} checkpoints can be imported "
      "(post-LN encoders with absolute positions)."
    )
  act = hf.get("hidden_act", "gelu")
  if act not in _GELU:
    raise HFImportError(
      f"config.json hidden_act={act!r}: the encoder uses GELU; supported {sorted(_GELU)}."
    )
  kind = hf.get("position_embedding_type", "absolute")
  if kind != "absolute":
    raise HFImportError(
      f"config.json position_embedding_type={kind!r}: only 'absolute' "
      "position embeddings are supported."
    )
  if hf.get("is_decoder") or hf.get("add_cross_attention"):
    raise HFImportError(
      "config.json describes a decoder (is_decoder / add_cross_attention): only "
      "bidirectional encoders can be imported."
    )


def model_fields_from_hf(hf: Mapping) -> dict[str, Any]:
  """The `CHECKPOINT_FIELDS` of a BERT/RoBERTa (or exported) config.json, checked: overlay them on
  a user's config, which keeps attention, k, sharing, projection, max_len, dropout and dtype."""
  _check_supported(hf)
  saved = saved_model_config(hf)
  if saved is not None:
    return {f: getattr(saved, f) for f in CHECKPOINT_FIELDS}
  return dict(
    vocab_size=int(hf["vocab_size"]),
    num_layers=int(hf["num_hidden_layers"]),
    hidden_size=int(hf["hidden_size"]),
    num_heads=int(hf["num_attention_heads"]),
    mlp_dim=int(hf["intermediate_size"]),
    type_vocab_size=int(hf.get("type_vocab_size", 2)),
    layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
    gelu_approximate=_GELU[hf.get("hidden_act", "gelu")],
    pre_ln=False,
  )


def model_config_from_hf(hf: Mapping, dtype: str | None = None) -> ModelConfig:
  """The checkpoint's own `ModelConfig`: full attention at its own length for a HF checkpoint,
  the stored config for an exported one. `dtype` (computation) defaults to float32 / stored."""
  fields = model_fields_from_hf(hf)
  saved = saved_model_config(hf)
  if saved is not None:
    return saved if dtype is None else dataclasses.replace(saved, dtype=dtype)
  return ModelConfig(
    **fields,
    max_len=int(hf["max_position_embeddings"]) - position_offset(hf),
    attention="full",
    dropout_rate=float(hf.get("hidden_dropout_prob", 0.1)),
    attention_dropout_rate=float(hf.get("attention_probs_dropout_prob", 0.1)),
    dtype=dtype or "float32",
  )


def config_for_checkpoint(cfg: ModelConfig, hf: Mapping) -> ModelConfig:
  """`cfg` with the checkpoint's `CHECKPOINT_FIELDS`; everything else stays the user's."""
  try:
    return dataclasses.replace(cfg, **model_fields_from_hf(hf))
  except ConfigError as e:
    raise HFImportError(f"The checkpoint's widths do not fit the requested model: {e}") from e
