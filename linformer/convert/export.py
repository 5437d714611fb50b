"""The project's parameters -> a HuggingFace BERT/RoBERTa directory, read back bit for bit.

`export_dir` (a run's checkpoint through `python export.py`, from `training.restore.run_params`)
writes `model.safetensors`, `config.json` and the run's tokenizer. Every parameter HF BERT/RoBERTa
has a name for is written under that name (`bert.*` / `roberta.*`, the MLM head as
`cls.predictions.*` / `lm_head.*`, decoder tied to the word embeddings as in `*ForMaskedLM`); the
rest of the parameter tree (Linformer's E/F, pre-LN's final norm, fixed random projections) goes
under `linformer.*` names (see `linformer.convert.names`), so nothing is lost.
`hf_import.import_params` / `load_pretrained` read the directory back exactly, restoring the
project's model fields from config.json's `linformer` key.

A plain `transformers` load is exact only for a post-LN full-attention model with a tokenizer.json:
for a Linformer it ignores the `linformer.*` tensors and runs full attention, for pre-LN it places
the LayerNorms wrongly. config.json's `linformer.transformers_load` says what it would miss.

A model without token types (`type_vocab_size=0`) is written with one all-zero token type row,
which adds nothing. RoBERTa-style exports write `pad_token_id + 1` zero position rows before the
model's (RoBERTa numbers positions from there); the import drops them again.

The tokenizer: a run's `tokenizer/tokenizer.json` is copied. A SentencePiece run has no
tokenizer.json (converting it would risk changing its normalisation); its `sentencepiece.model`
is copied instead, which `Tokenizer.load(out)` reads, and config.json says so.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping

import numpy as np

from linformer.config import ModelConfig
from linformer.convert import names
from linformer.convert.hf_config import CONFIG_FILE, MODEL_TYPES, TOKENIZER_FILE, WEIGHTS_FILE
from linformer.data.tokenizer import SENTENCEPIECE_FILE, Tokenizer

FORMAT_VERSION = 1
_ARCH = {"bert": "Bert", "roberta": "Roberta"}


def position_offset(model_type: str, pad_token_id: int) -> int:
  """Leading position rows HF uses for no real token: RoBERTa's padding_idx + 1, BERT's 0."""
  return pad_token_id + 1 if model_type == "roberta" else 0


def _has_head(params: Mapping[tuple, np.ndarray], model_type: str, cfg: ModelConfig) -> bool:
  head = [t.path for t in names.head_tensors(model_type, cfg)]
  present = [p for p in head if p in params]
  if present and len(present) != len(head):
    raise ValueError(f"The parameters hold part of the MLM head only ({names.dotted(present)}).")
  return bool(present)


def export_params(
  params: Mapping[tuple, np.ndarray],
  cfg: ModelConfig,
  model_type: str = "bert",
  *,
  pad_token_id: int = 0,
  later_positions: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
  """{HF tensor name: float32 array} of a `MaskedLM(cfg)` flat parameter mapping (the paths of
  `nnx.to_flat_state`, fixed variables included). With an MLM head the names are those of
  `BertForMaskedLM` / `RobertaForMaskedLM`, without one those of `BertModel` / `RobertaModel`.
  `later_positions`: rows for positions max_len, max_len + 1, ... appended to the model's."""
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r}: use one of {MODEL_TYPES}.")
  names.check_convertible(cfg)
  params = names.unstack_layers({tuple(p): np.asarray(v) for p, v in params.items()})
  head = _has_head(params, model_type, cfg)
  prefix = model_type + "." if head else ""
  c = cfg.hidden_size
  out = {}
  table = [t for t in names.hf_tensors(cfg, model_type) if head or not t.head]
  missing = [t.path for t in table if t.path not in params]
  if missing:
    raise ValueError(f"The parameters lack {names.dotted(missing)}: not a MaskedLM of this config.")
  for t in table:
    value = params[t.path]
    if t.path == names.POSITIONS:
      offset = position_offset(model_type, pad_token_id)
      later = np.zeros((0, c), value.dtype) if later_positions is None else later_positions
      value = np.concatenate([np.zeros((offset, c), value.dtype), value, later.astype(value.dtype)])
    out[("" if t.head else prefix) + t.name] = t.to_hf(value)
  if not cfg.type_vocab_size:
    out[prefix + "embeddings.token_type_embeddings.weight"] = np.zeros((1, c), np.float32)
  known = {t.path for t in table}
  for path in sorted(set(params) - known, key=str):
    name = names.linformer_name(path, cfg)
    if name in out or names.linformer_path(name) != path:
      raise ValueError(f"{path} has no unambiguous export name (got {name!r}).")
    out[name] = params[path]
  return {n: np.ascontiguousarray(v, np.float32) for n, v in out.items()}


def transformers_load_notes(
  cfg: ModelConfig, model_type: str, sentencepiece: bool, classifier: bool = False
) -> list[str]:
  """What `transformers.AutoModel*.from_pretrained(out)` would get wrong; [] when it is exact."""
  notes = []
  if classifier:
    notes.append(
      "a fine-tuned classifier: its head (cls_dense, cls_out) is written as linformer.tree.cls_* "
      "tensors, which transformers ignores, so AutoModelForSequenceClassification would put a "
      "new, untrained classifier on the encoder; load the whole model with "
      "linformer.convert.hf_import, or predict with eval.py on the run."
    )
  if cfg.attention == "linformer":
    notes.append(
      "attention='linformer': transformers ignores the linformer.* E/F tensors and "
      "runs full attention, so its outputs differ; load with "
      "linformer.convert.hf_import."
    )
  if cfg.pre_ln:
    notes.append(
      "pre_ln=True: transformers' BERT and RoBERTa are post-LN: they apply the "
      "LayerNorms in other places and ignore linformer.encoder.final_norm; outputs are "
      "wrong."
    )
  if model_type == "roberta" and cfg.gelu_approximate:
    notes.append(
      "gelu_approximate=True: RoBERTa's lm_head always uses the exact GELU, so the "
      "MLM logits differ slightly."
    )
  if sentencepiece:
    notes.append(
      f"no {TOKENIZER_FILE}: the tokenizer is {SENTENCEPIECE_FILE} (SentencePiece), "
      "which AutoTokenizer does not read; linformer.data.tokenizer.Tokenizer.load does."
    )
  return notes


def hf_config(
  cfg: ModelConfig,
  model_type: str,
  tokenizer: Tokenizer | None = None,
  *,
  head: bool = True,
  sentencepiece: bool = False,
  source: dict | None = None,
  classifier: bool = False,
  positions: int | None = None,
) -> dict:
  """config.json: the HF BERT/RoBERTa fields plus the project's model under `linformer`.
  `positions`: rows of the position table (None: the model's max_len)."""
  ids = dict(pad_token_id=0, bos_token_id=None, eos_token_id=None)
  if tokenizer is not None:
    ids = dict(
      pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id
    )
  arch = _ARCH[model_type] + ("ForMaskedLM" if head else "Model")
  return {
    "architectures": [arch],
    "model_type": model_type,
    "vocab_size": cfg.vocab_size,
    "hidden_size": cfg.hidden_size,
    "num_hidden_layers": cfg.num_layers,
    "num_attention_heads": cfg.num_heads,
    "intermediate_size": cfg.mlp_dim,
    "hidden_act": "gelu_new" if cfg.gelu_approximate else "gelu",
    "hidden_dropout_prob": cfg.dropout_rate,
    "attention_probs_dropout_prob": cfg.attention_dropout_rate,
    "max_position_embeddings": (positions or cfg.max_len)
    + position_offset(model_type, ids["pad_token_id"]),
    "type_vocab_size": max(cfg.type_vocab_size, 1),
    "initializer_range": 0.02,
    "layer_norm_eps": cfg.layer_norm_eps,
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
    "dtype": "float32",
    **ids,
    "linformer": {
      **cfg.to_dict(),
      "format_version": FORMAT_VERSION,
      "tokenizer": SENTENCEPIECE_FILE if sentencepiece else TOKENIZER_FILE,
      "transformers_load": transformers_load_notes(cfg, model_type, sentencepiece, classifier),
      **({"source": source} if source else {}),
    },
  }


def export_dir(
  out: str,
  params: Mapping[tuple, np.ndarray],
  cfg: ModelConfig,
  model_type: str = "bert",
  *,
  tokenizer_dir: str | None = None,
  source: dict | None = None,
  later_positions: np.ndarray | None = None,
) -> dict:
  """Writes model.safetensors, config.json and the tokenizer of `tokenizer_dir` (a run's saved
  tokenizer directory, or a tokenizer.json) to `out`; returns the config written.
  `later_positions` (`source_later_positions`): position rows beyond the model's max_len."""
  from safetensors.numpy import save_file

  tokenizer, sentencepiece, tok_src = None, False, None
  if tokenizer_dir:
    tok_src = tokenizer_dir
    if os.path.isdir(tokenizer_dir):  # Tokenizer.load's order: SentencePiece first
      sp = os.path.join(tokenizer_dir, SENTENCEPIECE_FILE)
      tok_src = sp if os.path.exists(sp) else os.path.join(tokenizer_dir, TOKENIZER_FILE)
    sentencepiece = not tok_src.endswith(".json")
    tokenizer = Tokenizer.load(tok_src)
    if tokenizer.vocab_size > cfg.vocab_size:
      raise ValueError(
        f"The tokenizer has {tokenizer.vocab_size} ids, the model {cfg.vocab_size}"
        " embedding rows: they do not belong together."
      )
  pad = tokenizer.pad_id if tokenizer is not None else 0
  tensors = export_params(
    params, cfg, model_type, pad_token_id=pad, later_positions=later_positions
  )
  extra = 0 if later_positions is None else len(later_positions)
  config = hf_config(
    cfg,
    model_type,
    tokenizer,
    head=_has_head(params, model_type, cfg),
    sentencepiece=sentencepiece,
    source=source,
    classifier=any(str(path[0]).startswith("cls_") for path in params),
    positions=cfg.max_len + extra,
  )
  os.makedirs(out, exist_ok=True)
  save_file(tensors, os.path.join(out, WEIGHTS_FILE), metadata={"format": "pt"})
  with open(os.path.join(out, CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  if tok_src:
    name = SENTENCEPIECE_FILE if sentencepiece else TOKENIZER_FILE
    shutil.copyfile(tok_src, os.path.join(out, name))
  return config


def source_later_positions(run_config, cfg: ModelConfig) -> np.ndarray | None:
  """The position rows of the HF checkpoint a run started from (`config.init_from`) beyond the
  run's n, or None: the run never saw those positions, so they are the checkpoint's unchanged,
  and an export that carries them keeps every position the model was given (a run at n = 256
  from a 512-position BERT exports 512)."""
  hf = source_hf_config(run_config)
  if hf is None:
    return None
  from linformer.convert import hf_config as hf_fields
  from linformer.convert.hf_import import read_safetensors

  offset = hf_fields.position_offset(hf)
  if hf["max_position_embeddings"] - offset <= cfg.max_len:
    return None
  tensors = read_safetensors(run_config.init_from)
  name = next(n for n in tensors if n.endswith("embeddings.position_embeddings.weight"))
  return np.asarray(tensors[name][offset + cfg.max_len :], np.float32)


def source_hf_config(run_config) -> dict | None:
  """config.json of the HF (or exported) checkpoint the run was warm-started from, if any."""
  init_from = run_config.get("init_from") or ""
  file = os.path.join(init_from, CONFIG_FILE) if init_from else ""
  if not (file and os.path.exists(file)):
    return None
  with open(file) as f:
    hf = json.load(f)
  return hf if hf.get("model_type") in MODEL_TYPES else None  # else a project run's config


if __name__ == "__main__":  # older docs ran this module; the command is export.py now
  import sys

  print(
    "linformer.convert.export: error: a library module, not a command; export a run with "
    "`python export.py --workdir=W --out=DIR` from the repository root.",
    file=sys.stderr,
  )
  sys.exit(2)
