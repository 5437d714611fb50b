"""Warm starts: a fresh run's weights taken from another run or from a HuggingFace checkpoint.

`config.init_from` names the source: a project workdir (its latest checkpoint and tokenizer), or a
HuggingFace BERT / RoBERTa directory (config.json, model.safetensors, tokenizer.json), which is
also what `export.py` writes. The loop:

1. `open_source` checks the source before the run writes anything; for a HF checkpoint,
   `Source.apply_to` overlays the widths it fixes (layers, hidden, heads, vocabulary, ...) onto
   `config.model`, while attention, k, sharing, projection and max_len stay the config's.
2. `load_values` reads what the source provides for the subtrees the task names
   (`Task.init_subtrees`: the encoder for fine-tuning, everything for MLM), and `apply` copies
   it, exactly, into the freshly initialised state. What the source lacks (Linformer's E/F from
   a full-attention checkpoint, a new head) keeps its fresh init.
3. The names of the imported parameters are kept in `{workdir}/warm_start.json`, so
   `config.freeze_pretrained_steps` (train only the new parameters first) survives a resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from jax.tree_util import DictKey

from linformer.config import ConfigError, ModelConfig
from linformer.convert import hf_config, hf_import, names
from linformer.training import checkpointing

# Model fields that may differ from a source run: they do not change parameter shapes.
FREE_MODEL_FIELDS = (
  "dropout_rate",
  "attention_dropout_rate",
  "activation_dropout_rate",
  "dtype",
  "remat",
  "remat_policy",
  "attention_impl",
  "projection_init",
  "vocab_multiple",  # only zero padding rows differ (names.resize_vocab_rows)
  "scan_layers",  # the layers stacked or one by one (names.stack_layers / unstack_layers)
)
# Model fields the task decides: a causal LM may start from a masked-LM run. They change no shape
# but the causal Linformer's learned or random E and F ((k, segment_len), not (k, max_len)).
TASK_MODEL_FIELDS = ("causal", "segment_len")
RECORD_FILE = "warm_start.json"
RUN, HUGGINGFACE = "run", "huggingface"


def path_key(path) -> tuple:
  """A parameter's path in a train-state pytree as a plain tuple ('encoder', 'layers', 0, ...)."""
  return tuple(p.key for p in path if isinstance(p, DictKey))


def dotted(key: tuple) -> str:
  return "/".join(map(str, key))


@dataclasses.dataclass(frozen=True)
class Source:
  path: str
  kind: str  # RUN | HUGGINGFACE
  tokenizer: str  # what `Tokenizer.load` reads
  fixed_model: Mapping  # config.model fields the source fixes (HF: widths, vocabulary, ...)

  def apply_to(self, config) -> ml_collections.ConfigDict:
    """`config` with the source's fixed model fields (a HF checkpoint's widths); a run source
    must already match, which `open_source` checked."""
    if self.kind != HUGGINGFACE:
      return config
    config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy; the caller's stays
    changed = {
      k: (config.model.get(k), v) for k, v in self.fixed_model.items() if config.model.get(k) != v
    }
    for k, v in self.fixed_model.items():
      config.model[k] = v
    if changed and jax.process_index() == 0:
      print(
        f"config.init_from={self.path}: the checkpoint fixes "
        + ", ".join(f"model.{k}={new!r}" for k, (_, new) in sorted(changed.items()))
        + "."
      )
    return config


def _normal(v):
  """Config values compare equal across JSON round trips (tuples become lists)."""
  return json.loads(json.dumps(v))


def open_source(config, workdir: str | None = None) -> Source | None:
  """The checked source of `config.init_from`, or None. A run resumed in `workdir` takes the
  fixed fields from its own config.json, so the source is not read again."""
  path = config.get("init_from")
  if not path:
    if config.get("freeze_pretrained_steps"):
      raise ConfigError(
        f"config.freeze_pretrained_steps={config.freeze_pretrained_steps} freezes imported "
        "weights, but config.init_from is empty. Fix: set --config.init_from to a HuggingFace "
        "directory or a run's workdir, or freeze_pretrained_steps=0."
      )
    return None
  if not os.path.isdir(path):
    raise ConfigError(
      f"config.init_from={path!r} is not a directory. Fix: give a run's workdir "
      "or a HuggingFace BERT / RoBERTa directory (config.json, "
      "model.safetensors, tokenizer.json)."
    )
  file = os.path.join(path, checkpointing.CONFIG_FILE)
  try:
    with open(file) as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise ConfigError(
      f"config.init_from={path!r}: no run and no HuggingFace model here "
      f"({checkpointing.CONFIG_FILE} is missing). Fix: give a run's workdir or a "
      "HuggingFace directory."
    ) from None
  except json.JSONDecodeError as e:
    raise ConfigError(f"config.init_from={path!r}: {file} is not valid JSON ({e}).") from None
  if "model_type" in saved:
    return _huggingface_source(path, saved, config, workdir)
  return _run_source(path, ml_collections.ConfigDict(saved), config)


def _run_source(path: str, source, config) -> Source:
  differ = [
    f"{k}: pretrained {source.model.get(k)!r}, asked {v!r}"
    for k, v in config.model.items()
    if k not in FREE_MODEL_FIELDS + TASK_MODEL_FIELDS
    and _normal(source.model.get(k, v)) != _normal(v)
  ]
  columns = _projection_columns(source.model), _projection_columns(config.model)
  if None not in columns and columns[0] != columns[1]:  # else attention or projection differ
    differ.append(
      f"E and F: pretrained (k, {columns[0]}), asked (k, {columns[1]}) (causal="
      f"{config.model.get('causal')!r}, segment_len={config.model.get('segment_len')!r}: a "
      "causal Linformer's learned or random E and F have segment_len columns)"
    )
  if differ:
    raise ConfigError(
      f"config.init_from={path!r} holds a model of a different shape than config.model "
      f"({'; '.join(differ)}). Use the source run's model fields (e.g. the same size=, n=, "
      "k= config-string values)."
    )
  if checkpointing.latest_step(path) is None:
    raise ConfigError(
      f"config.init_from={path!r} has no checkpoint: train it first (or wait "
      "for its first checkpoint)."
    )
  return Source(path, RUN, os.path.join(path, "tokenizer"), {})


def _projection_columns(model) -> int | None:
  """The columns of a model's E and F matrices, or None when it has none that depend on n."""
  if model.get("attention") != "linformer" or model.get("projection") not in ("learned", "random"):
    return None
  return model.get("segment_len") if model.get("causal") else model.get("max_len")


def _huggingface_source(path: str, hf: dict, config, workdir: str | None) -> Source:
  if config.model.get("attention") == "lsh":
    raise ConfigError(
      f"config.init_from={path!r} is a HuggingFace checkpoint, whose separate query and key "
      "weights an LSH model (one shared query-key projection) cannot take. Fix: init_from a run "
      "of this project with attention='lsh', or use attention='full' or 'linformer'."
    )
  try:
    fixed = hf_config.model_fields_from_hf(hf)
  except hf_config.HFImportError as e:
    raise ConfigError(f"config.init_from={path!r}: {e}") from None
  if not any(
    os.path.exists(os.path.join(path, f))
    for f in (hf_config.WEIGHTS_FILE, hf_config.WEIGHTS_INDEX_FILE)
  ):
    raise ConfigError(
      f"config.init_from={path!r} has no {hf_config.WEIGHTS_FILE} (nor "
      f"{hf_config.WEIGHTS_INDEX_FILE}). Fix: save the model with "
      "save_pretrained(dir, safe_serialization=True)."
    )
  tokenizer = next(
    (
      os.path.join(path, f)
      for f in (hf_config.TOKENIZER_FILE, "sentencepiece.model")
      if os.path.exists(os.path.join(path, f))
    ),
    None,
  )
  if tokenizer is None:
    raise ConfigError(
      f"config.init_from={path!r} has no {hf_config.TOKENIZER_FILE}. Fix: save "
      "the fast tokenizer beside the weights (AutoTokenizer.from_pretrained(...)"
      ".save_pretrained(dir))."
    )
  distill = config.get("distill") or {}
  if distill.get("alpha"):
    if not hf_import.has_mlm_head(path, hf.get("model_type", "bert")):
      raise ConfigError(
        f"config.distill.alpha={distill.alpha}: the KL term needs the teacher's MLM head, and "
        f'config.init_from={path!r} has none. Fix: fit a head first (README, "Start from a '
        'pretrained model") and start from its export, or set distill.alpha=0.'
      )
  run = checkpointing.read_saved_config(workdir) if workdir else None
  if run is not None and run.get("init_from") == path:  # a resume: the run's record of the widths
    fixed = {k: run.get("model", {}).get(k, v) for k, v in fixed.items()}
  user = config.model
  if user.get("attention") == "linformer" and isinstance(user.get("k"), (list, tuple)):
    if len(user.k) != fixed["num_layers"]:
      raise ConfigError(
        f"config.model.k={list(user.k)!r} has {len(user.k)} entries, but the checkpoint at "
        f"config.init_from={path!r} has {fixed['num_layers']} layers. Fix: one k per layer, "
        "or a single k."
      )
  return Source(path, HUGGINGFACE, tokenizer, {k: _normal(v) for k, v in fixed.items()})


def load_values(
  source: Source, cfg: ModelConfig, subtrees: tuple[str, ...] | None
) -> tuple[dict[tuple, np.ndarray], list[str]]:
  """({parameter path: array} the source provides under `subtrees` (all when None), notes),
  stacked as `cfg`'s layers are (ModelConfig.scan_layers), whatever form the source has."""
  if source.kind == RUN:
    step = checkpointing.latest_step(source.path)
    saved = checkpointing.restore_raw(
      checkpointing.make_manager(source.path, None, create=False), step
    )
    values = {**names.flatten(saved["params"]), **names.flatten(saved.get("rest") or {})}
    values = names.unstack_layers(values)  # either form of layers starts either form
    notes = [f"run {source.path}, step {step}"]
  else:
    try:
      values, report = hf_import.import_params(source.path, cfg)
    except hf_config.HFImportError as e:
      raise ConfigError(f"config.init_from={source.path!r}: {e}") from None
    notes = [
      f"{report.model_type} checkpoint {source.path}",
      "MLM head " + ("imported" if report.head_imported else "new"),
      f"positions {report.positions} ({report.source_positions} -> {cfg.max_len})",
      *report.notes,
    ]
  if subtrees is not None:
    values = {k: v for k, v in values.items() if k[0] in subtrees}
  if cfg.scanned:
    values = names.stack_layers(values)
  return values, notes


def copy_values(tree, values: Mapping[tuple, np.ndarray]):
  """`tree` (parameters or other variables) with every leaf that `values` holds replaced, on
  the leaf's sharding."""

  def copy(path, leaf):
    key = path_key(path)
    if key not in values:
      return leaf
    value = values[key]
    if key in names.VOCAB_ROWS and value.ndim == leaf.ndim:
      try:
        value = names.resize_vocab_rows(np.asarray(value), key, leaf.shape[0])
      except ValueError as e:
        raise ConfigError(f"config.init_from: {e}; the vocabularies differ.") from None
    if tuple(value.shape) != tuple(leaf.shape):
      raise ConfigError(
        f"config.init_from: {dotted(key)} has shape {tuple(value.shape)} in the "
        f"source, {tuple(leaf.shape)} here."
      )
    return jax.device_put(np.asarray(value, leaf.dtype), leaf.sharding)

  return jax.tree_util.tree_map_with_path(copy, tree)


def apply(state, values: Mapping[tuple, np.ndarray], strict: bool):
  """`state` with every parameter and fixed variable that `values` holds replaced, on the
  state's shardings. `strict` (a run source): every leaf under the copied subtrees must be
  there with the same shape; otherwise what is absent keeps its fresh init."""

  if strict:
    roots = {k[0] for k in values}
    for part in (state.params, state.rest):
      for path, _ in jax.tree_util.tree_flatten_with_path(part)[0]:
        key = path_key(path)
        if key[0] in roots and key not in values:
          raise ConfigError(f"config.init_from: the source checkpoint has no {dotted(key)}.")
  return state.replace(
    params=copy_values(state.params, values), rest=copy_values(state.rest, values)
  )


def write_record(
  workdir: str, source: Source, imported: list[str], new: list[str], notes: list[str]
) -> None:
  """What came from where, for people and for `freeze_pretrained_steps` after a resume."""
  if jax.process_index() != 0:
    return
  record = {
    "init_from": source.path,
    "kind": source.kind,
    "notes": notes,
    "imported": sorted(imported),
    "new": sorted(new),
  }
  tmp = os.path.join(workdir, RECORD_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2)
  os.replace(tmp, os.path.join(workdir, RECORD_FILE))


def read_imported(workdir: str) -> list[str] | None:
  """The imported parameter names a run recorded, or None before its first start."""
  try:
    with open(os.path.join(workdir, RECORD_FILE)) as f:
      return json.load(f)["imported"]
  except FileNotFoundError:
    return None


def start_from(state, source, values, notes, workdir: str):
  """The fresh state with the source's weights; what was imported and what is new recorded."""
  state = apply(state, values, strict=source.kind == RUN)
  new = [
    dotted(path_key(p))
    for p, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]
    if path_key(p) not in values
  ]
  write_record(workdir, source, [dotted(k) for k in values], new, notes)
  if jax.process_index() == 0:
    shown = ", ".join(new[:4]) + (f" and {len(new) - 4} more" if len(new) > 4 else "")
    print(
      f"Warm start from {'; '.join(notes)}: {len(values)} arrays imported, {len(new)} new "
      f"parameters{': ' + shown if new else ''} (see {RECORD_FILE})."
    )
  return state


def teacher_weights(teacher, values, config):
  """The teacher's weights from the warm start's `values`: the whole encoder (and the MLM
  head for the KL term; open_source checked that the checkpoint has one)."""
  if values is None:
    raise ConfigError(
      "config.transfer_steps / config.distill need a teacher: set config.init_from to the "
      "pretrained checkpoint."
    )
  distill = config.get("distill") or {}
  head = ("mlm_dense", "mlm_norm", "mlm_bias")
  missing = [
    dotted(path_key(p))
    for p, _ in jax.tree_util.tree_flatten_with_path(teacher)[0]
    if path_key(p) not in values and (distill.get("alpha") or path_key(p)[0] not in head)
  ]
  if missing:
    raise ConfigError(
      f"config.init_from={config.init_from!r} cannot be the full-attention teacher: it lacks "
      f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}. Fix: start from the "
      "pretrained checkpoint itself."
    )
  return copy_values(teacher, values)
