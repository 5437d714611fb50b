"""A project run's checkpoint -> a HuggingFace BERT/RoBERTa directory, read back bit for bit.

    python -m linformer.convert.export --workdir=runs/base --out=exported/base [--step=N]
        [--model_type=auto|bert|roberta]

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

from linformer.config import ConfigError, ModelConfig
from linformer.convert import names
from linformer.convert.hf_config import (
  CONFIG_FILE,
  MODEL_TYPES,
  TOKENIZER_FILE,
  WEIGHTS_FILE,
  config_for_checkpoint,
)
from linformer.convert.hf_import import target_shapes
from linformer.data.tokenizer import SENTENCEPIECE_FILE, Tokenizer

FORMAT_VERSION = 1
_ARCH = {"bert": "Bert", "roberta": "Roberta"}


def position_offset(model_type: str, pad_token_id: int) -> int:
  """Leading position rows HF uses for no real token: RoBERTa's padding_idx + 1, BERT's 0."""
  return pad_token_id + 1 if model_type == "roberta" else 0


def _has_head(params: Mapping[tuple, np.ndarray], model_type: str) -> bool:
  head = [t.path for t in names.head_tensors(model_type)]
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
) -> dict[str, np.ndarray]:
  """{HF tensor name: float32 array} of a `MaskedLM(cfg)` flat parameter mapping (the paths of
  `nnx.to_flat_state`, fixed variables included). With an MLM head the names are those of
  `BertForMaskedLM` / `RobertaForMaskedLM`, without one those of `BertModel` / `RobertaModel`."""
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r}: use one of {MODEL_TYPES}.")
  params = {tuple(p): np.asarray(v) for p, v in params.items()}
  head = _has_head(params, model_type)
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
      value = np.concatenate([np.zeros((offset, c), value.dtype), value])
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


def transformers_load_notes(cfg: ModelConfig, model_type: str, sentencepiece: bool) -> list[str]:
  """What `transformers.AutoModel*.from_pretrained(out)` would get wrong; [] when it is exact."""
  notes = []
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
) -> dict:
  """config.json: the HF BERT/RoBERTa fields plus the project's model under `linformer`."""
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
    "max_position_embeddings": cfg.max_len + position_offset(model_type, ids["pad_token_id"]),
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
      "transformers_load": transformers_load_notes(cfg, model_type, sentencepiece),
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
) -> dict:
  """Writes model.safetensors, config.json and the tokenizer of `tokenizer_dir` (a run's saved
  tokenizer directory, or a tokenizer.json) to `out`; returns the config written."""
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
  tensors = export_params(params, cfg, model_type, pad_token_id=pad)
  config = hf_config(
    cfg,
    model_type,
    tokenizer,
    head=_has_head(params, model_type),
    sentencepiece=sentencepiece,
    source=source,
  )
  os.makedirs(out, exist_ok=True)
  save_file(tensors, os.path.join(out, WEIGHTS_FILE), metadata={"format": "pt"})
  with open(os.path.join(out, CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  if tok_src:
    name = SENTENCEPIECE_FILE if sentencepiece else TOKENIZER_FILE
    shutil.copyfile(tok_src, os.path.join(out, name))
  return config


def _init_from_hf(run_config) -> dict | None:
  """config.json of the HF (or exported) checkpoint the run was warm-started from, if any."""
  init_from = run_config.get("init_from") or ""
  file = os.path.join(init_from, CONFIG_FILE) if init_from else ""
  if not (file and os.path.exists(file)):
    return None
  with open(file) as f:
    hf = json.load(f)
  return hf if hf.get("model_type") in MODEL_TYPES else None  # else a project run's config


def run_params(workdir: str, step: int | None = None):
  """(run config, ModelConfig, {path: array} of params and fixed variables, step) of a run's
  checkpoint (the latest unless `step`). A run warm-started from a HF checkpoint has that
  checkpoint's widths (`config_for_checkpoint`), as in the loop."""
  from linformer.training import checkpointing

  config = checkpointing.load_config(workdir)
  if not os.path.isdir(os.path.join(workdir, checkpointing.LATEST)):
    raise ConfigError(f"{workdir} has no checkpoint yet. Fix: train it first (train.py).")
  manager = checkpointing.make_manager(workdir, None, create=False)  # read only: deletes nothing
  steps = manager.all_steps()
  if not steps:
    raise ConfigError(f"{workdir} has no checkpoint yet. Fix: train it first (train.py).")
  step = max(steps) if step is None else step
  if step not in steps:
    raise ConfigError(
      f"--step={step}: {workdir} has no checkpoint at step {step}; it has {sorted(steps)}."
    )
  raw = checkpointing.restore_raw(manager, step)
  params = {**names.flatten(raw["params"]), **names.flatten(raw.get("rest") or {})}
  if names.WORDS not in params:
    raise ValueError(f"{workdir}: the checkpoint has no encoder (no {names.WORDS}).")
  cfg = ModelConfig.from_dict(
    {**config.model.to_dict(), "vocab_size": int(params[names.WORDS].shape[0])}
  )
  hf = _init_from_hf(config)
  if hf is not None:
    cfg = config_for_checkpoint(cfg, hf)
  shapes = target_shapes(cfg)
  wrong = [
    f"{'.'.join(map(str, p))} {params[p].shape} (config: {shapes[p]})"
    for p in params
    if p in shapes and tuple(params[p].shape) != shapes[p]
  ]
  if wrong:
    raise ValueError(
      f"{workdir}: the run's config.model does not describe its checkpoint: "
      + "; ".join(wrong[:10])
    )
  return config, cfg, params, step


def export_run(
  workdir: str, out: str, *, step: int | None = None, model_type: str = "auto"
) -> dict:
  """Exports a run's checkpoint (the latest unless `step`) to `out`; returns config.json.

  `model_type="auto"`: the architecture of the HF checkpoint the run started from, else BERT for
  a model with segment types and RoBERTa without."""
  config, cfg, params, step = run_params(workdir, step)
  if model_type == "auto":
    hf = _init_from_hf(config)
    model_type = hf["model_type"] if hf else "bert" if cfg.type_vocab_size >= 2 else "roberta"
  tokenizer_dir = os.path.join(workdir, "tokenizer")
  return export_dir(
    out,
    params,
    cfg,
    model_type,
    tokenizer_dir=tokenizer_dir if os.path.isdir(tokenizer_dir) else None,
    source={"workdir": os.path.abspath(workdir), "step": int(step), "task": config.get("task")},
  )


def define_flags(fv, argv) -> None:
  from absl import flags

  del argv
  define = dict(flag_values=fv)
  flags.DEFINE_string(
    "workdir", None, "The run's --workdir (its latest checkpoint is exported).", **define
  )
  flags.DEFINE_string("out", None, "Directory to write the HuggingFace files to.", **define)
  flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).", **define)
  flags.DEFINE_enum(
    "model_type",
    "auto",
    ["auto", *MODEL_TYPES],
    "HF architecture; auto: that of config.init_from, else bert with token types, roberta without.",
    **define,
  )
  flags.mark_flags_as_required(["workdir", "out"], flag_values=fv)


def main(fv) -> int:
  from linformer.cli import UsageError

  if os.path.exists(fv.out) and not os.path.isdir(fv.out):
    raise UsageError(f"--out={fv.out} is a file. Fix: give a new or existing directory.")
  if fv.step is not None and fv.step < 0:
    raise UsageError(f"--step={fv.step}: give a checkpoint step >= 0.")
  if os.path.abspath(fv.out) == os.path.abspath(fv.workdir):
    raise UsageError(f"--out={fv.out} is the run's workdir. Fix: export to another directory.")
  config = export_run(fv.workdir, fv.out, step=fv.step, model_type=fv.model_type)
  print(f"Wrote {fv.out} ({config['model_type']}, step {config['linformer']['source']['step']}).")
  for note in config["linformer"]["transformers_load"]:
    print("Note:", note)
  return 0


def run(argv: list[str] | None = None) -> int:
  """`python -m linformer.convert.export` with `argv`; returns the exit status (2: bad input)."""
  from linformer import cli

  return cli.run("linformer.convert.export", define_flags, main, argv, doc=__doc__)


if __name__ == "__main__":
  import sys

  sys.exit(run())
