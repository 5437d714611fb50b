"""BERT and RoBERTa checkpoints in HuggingFace format -> the project's models: the tensors.

    cfg, encoder, tokenizer = load_pretrained("path/to/hf_dir")
    hidden = encoder(ids, mask, token_type_ids)   # = BertModel(...).last_hidden_state

    # Uptraining: the checkpoint's parameters for any target config (Linformer, longer n, ...).
    hf = hf_config.read_hf_config(path)
    cfg = hf_config.config_for_checkpoint(user_cfg, hf)  # widths etc. from the checkpoint
    params, report = import_params(path, cfg)  # {MaskedLM param path: array}; E/F are absent

config.json -> `ModelConfig` (`read_hf_config`, `config_for_checkpoint`, `model_config_from_hf`,
the supported architectures and `HFImportError`) is `linformer.convert.hf_config`; this module
reads the weights and maps them onto the model.

The directory holds `config.json`, `model.safetensors` (or a sharded `model.safetensors.index.json`
with its shards) and `tokenizer.json`. Weights are read with the `safetensors` numpy API: no torch.
The name mapping (HF `nn.Linear` weights are (out, in), the project's kernels (in, out)) is in
`linformer.convert.names`; tensors under a `bert.` / `roberta.` prefix (the `*ForMaskedLM` etc.
checkpoints) are found too.

MLM head. BertForMaskedLM's `cls.predictions` computes dense -> ACT2FN[hidden_act] -> LayerNorm
(eps = layer_norm_eps) -> tied decoder + bias, which is exactly `MaskedLM`'s head. RoBERTa's
`lm_head` hard-codes the exact GELU whatever `hidden_act` says, while `MaskedLM` uses
`cfg.gelu_approximate` there too: they differ only for a RoBERTa with an approximate `hidden_act`
(the report says so). A decoder that is not tied to the word embeddings cannot be represented.

RoBERTa positions. RoBERTa numbers positions from `padding_idx + 1` (= 2): a sequence's real tokens
have position ids 2, 3, ..., n+1 and its table has `max_position_embeddings` = max_len + 2 rows
(514 for 512 tokens). The project numbers positions 0..n-1, so the import drops the table's first
`padding_idx + 1` rows (`hf_config.position_offset`): project position p uses RoBERTa's row p + 2.
Real tokens then get exactly RoBERTa's embeddings as long as padding is on the right (real tokens
first), which is how the project pads. (RoBERTa gives padded tokens position `padding_idx`; those
are masked out of attention here and there, so they do not affect the real tokens.)

Longer sequences. For a target `max_len` beyond the checkpoint's P positions the table is
extended as Longformer did for RoBERTa (Beltagy et al. 2020, `convert_model_to_long`): the P
learned rows (after the offset) are copied block after block, row p = learned row p mod P, so
every position starts from an embedding the layers know and nearby positions stay distinct. A
shorter `max_len` takes the first rows.

Directories written by `linformer.convert.export` carry the project's model fields under the
`linformer` key of config.json (read by `hf_config.saved_model_config`) and the parameters HF has
no name for under `linformer.*`; the import restores both.

Not imported, on purpose: the `pooler`, other task heads (`cls.seq_relationship`, `classifier.*`,
`qa_outputs.*`) and the `position_ids` / `token_type_ids` buffers; they are listed as unused.
Any other tensor, and any tensor the encoder needs but the file lacks, is an `HFImportError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from linformer.config import ModelConfig
from linformer.convert import names
from linformer.convert.hf_config import (
  TOKENIZER_FILE,
  WEIGHTS_FILE,
  WEIGHTS_INDEX_FILE,
  HFImportError,
  model_config_from_hf,
  model_fields_from_hf,
  position_offset,
  read_hf_config,
  saved_model_config,
)
from linformer.data.tokenizer import Tokenizer
from linformer.model import Encoder, MaskedLM

# Tensors that are not part of the model; skipped, never an error.
_SKIPPED = re.compile(
  r"^(embeddings\.position_ids|embeddings\.token_type_ids|pooler\..*|cls\..*|lm_head\..*"
  r"|classifier\..*|qa_outputs\..*)$"
)


@dataclasses.dataclass(frozen=True)
class ImportReport:
  """What `load_pretrained` did: the architecture and the tensors it did not use."""

  model_type: str
  skipped: tuple[str, ...]  # tensor names in the file that are not part of the encoder
  position_offset: int  # rows dropped from the position table (2 for RoBERTa, 0 for BERT)


@dataclasses.dataclass(frozen=True)
class ParamsReport:
  """What `import_params` provided, so a warm start can say what is pretrained and what is new."""

  model_type: str
  head_imported: bool  # the MLM head came from the checkpoint (else it is fresh)
  exported: bool  # a `linformer.convert.export` directory: Linformer fields restored
  source_positions: int  # positions the checkpoint has (after the RoBERTa offset)
  positions: str  # "same", "extended" (Longformer copies) or "truncated"
  new: tuple[str, ...]  # target parameter paths the checkpoint does not provide (fresh init)
  unused: tuple[str, ...]  # tensor names in the file that were not used
  notes: tuple[str, ...] = ()  # anything that makes the import less than exact


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
    "with `transformers` (model.save_pretrained(dir, safe_serialization=True))."
  )


def tensor_names(path: str) -> list[str]:
  """The tensor names of a checkpoint directory, read from the file headers only."""
  from safetensors import safe_open

  index = os.path.join(path, WEIGHTS_INDEX_FILE)
  if not os.path.exists(os.path.join(path, WEIGHTS_FILE)) and os.path.exists(index):
    with open(index) as f:
      return sorted(json.load(f)["weight_map"])
  with safe_open(os.path.join(path, WEIGHTS_FILE), framework="numpy") as f:
    return sorted(f.keys())


def has_mlm_head(path: str, model_type: str) -> bool:
  """Whether the checkpoint brings an MLM head (BertForMaskedLM / RobertaForMaskedLM names)."""
  dense = names.head_names(model_type)["dense"] + ".weight"
  return any(n == dense or n.endswith("." + dense) for n in tensor_names(path))


def _strip_prefix(tensors: dict[str, np.ndarray], model_type: str) -> dict[str, np.ndarray]:
  """Drops a `bert.` / `roberta.` prefix (task-model checkpoints); renames old gamma/beta."""
  prefix = model_type + "."
  if any(name.startswith(prefix + "embeddings.") for name in tensors):
    tensors = {(n[len(prefix) :] if n.startswith(prefix) else n): v for n, v in tensors.items()}
  renamed = {}
  for name, value in tensors.items():
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    renamed[re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)] = value
  return renamed


def resize_positions(table: np.ndarray, max_len: int) -> np.ndarray:
  """`max_len` rows from a table of positions 0..P-1: its first rows, or (longer) the table
  copied block after block, row p = row p mod P (Longformer's initialisation)."""
  reps = -(-max_len // table.shape[0])
  return np.tile(table, (reps, 1))[:max_len]


def _listing(names_, limit=20) -> str:
  names_ = sorted(names_)
  more = f" ... and {len(names_) - limit} more" if len(names_) > limit else ""
  return ", ".join(names_[:limit]) + more


def target_shapes(cfg: ModelConfig) -> dict[tuple, tuple]:
  """{path: shape} of every variable of `MaskedLM(cfg)`, layers one by one (nothing is
  allocated)."""
  abstract = nnx.eval_shape(lambda: MaskedLM(cfg, rngs=nnx.Rngs(0)))
  return names.unstack_shapes(
    {p: tuple(v.shape) for p, v in nnx.to_flat_state(nnx.split(abstract)[1])}
  )


def _same_projections(a: ModelConfig, b: ModelConfig) -> bool:
  return a.attention == b.attention == "linformer" and (
    a.sharing,
    a.projection,
    a.layer_ks,
    a.max_len,
  ) == (b.sharing, b.projection, b.layer_ks, b.max_len)


def params_from_tensors(
  cfg: ModelConfig,
  tensors: Mapping[str, np.ndarray],
  model_type: str,
  *,
  offset: int = 0,
  saved: ModelConfig | None = None,
  head: bool = True,
) -> tuple[dict[tuple, np.ndarray], ParamsReport]:
  """{`MaskedLM(cfg)` parameter path: float32 array} for everything the tensors provide.

  `offset`: position rows to drop (RoBERTa). `saved`: the exported model config, whose
  `linformer.*` tensors are then used where they fit `cfg`. `head=False` imports the encoder only.
  """
  tensors = _strip_prefix(dict(tensors), model_type)
  shapes = target_shapes(cfg)
  table = [t for t in names.hf_tensors(cfg, model_type) if head or not t.head]
  head_parts = names.head_names(model_type)
  notes, unused = [], set()
  if head and head_parts["bias"] not in tensors and head_parts["decoder"] + ".bias" in tensors:
    tensors[head_parts["bias"]] = tensors[head_parts["decoder"] + ".bias"]
  present_head = [t.name for t in table if t.head and t.name in tensors]
  head_imported = bool(present_head)
  missing = {t.name for t in table if t.name not in tensors and (head_imported or not t.head)}
  used = {t.name for t in table}

  # Tied decoder: equal to its source or absent; anything else is a head we cannot represent.
  for part, source in (
    ("weight", "embeddings.word_embeddings.weight"),
    ("bias", head_parts["bias"]),
  ):
    name = f"{head_parts['decoder']}.{part}"
    if head and name in tensors and source in tensors:
      if not np.array_equal(tensors[name], tensors[source]):
        raise HFImportError(
          f"{name} differs from {source}: the checkpoint's MLM decoder is not "
          "tied, and MaskedLM ties it to the word embeddings."
        )
      used.add(name)
  if not cfg.type_vocab_size and "embeddings.token_type_embeddings.weight" in tensors:
    if np.any(tensors["embeddings.token_type_embeddings.weight"]):
      raise HFImportError(
        "The checkpoint has token type embeddings but the model "
        "type_vocab_size=0: take type_vocab_size from model_fields_from_hf."
      )
    unused.add("embeddings.token_type_embeddings.weight")  # exported stand-in: zero, dropped

  extra = {}  # linformer.* tensors of an exported model
  for name in (n for n in tensors if n.startswith(names.LINFORMER_PREFIX)):
    if saved is None:
      continue  # unexpected below
    used.add(name)
    try:
      path = names.linformer_path(name)
    except ValueError as e:
      raise HFImportError(str(e)) from e
    fits = path in shapes and shapes[path] == tensors[name].shape and (head or path[0] == "encoder")
    projection = "proj_k" in path or "proj_v" in path
    if fits and (not projection or _same_projections(saved, cfg)):
      extra[path] = tensors[name]
    elif head or path[0] == "encoder":
      unused.add(name)
      notes.append(
        f"{name} not used: "
        + (
          "the requested attention, sharing, projection, k or max_len differ."
          if projection
          else "no parameter of that path and shape in the requested model."
        )
      )
    else:
      unused.add(name)

  skipped = {n for n in set(tensors) - used if _SKIPPED.match(n)}
  unexpected = set(tensors) - used - skipped - unused
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing {len(missing)} tensor(s) the model needs: {_listing(missing)}")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected tensor(s): {_listing(unexpected)}")
    raise HFImportError(
      f"Checkpoint does not match a {model_type} encoder with {cfg.num_layers} layers "
      f"({'; '.join(parts)}). Check that config.json belongs to these weights."
    )

  out = {}
  source_positions = 0
  for t in table:
    if t.name not in tensors:
      continue
    source = tensors[t.name]
    try:
      if t.path == names.POSITIONS:
        source_positions = source.shape[0] - offset
        value = resize_positions(source[offset:], cfg.max_len)
      else:
        value = t.to_project(source)
    except ValueError as e:
      raise HFImportError(
        f"{t.name} has shape {source.shape}, which does not fit the config ({e})."
      ) from e
    if value.shape != shapes[t.path]:
      raise HFImportError(
        f"{t.name} has shape {source.shape}, giving {value.shape} for "
        f"{'.'.join(map(str, t.path))} where the config needs {shapes[t.path]}. Check "
        "config.json against the weights."
      )
    out[t.path] = np.asarray(value, np.float32)
  out.update({p: np.asarray(v, np.float32) for p, v in extra.items()})

  positions = (
    "same"
    if source_positions == cfg.max_len
    else "extended"
    if source_positions < cfg.max_len
    else "truncated"
  )
  if positions == "extended":
    notes.append(
      f"positions {source_positions}..{cfg.max_len - 1} copy rows 0.."
      f"{source_positions - 1} (Longformer's initialisation)."
    )
  if head_imported and model_type == "roberta" and cfg.gelu_approximate:
    notes.append(
      "RoBERTa's lm_head uses the exact GELU; this MaskedLM's head uses the tanh "
      "approximation (gelu_approximate=True), so MLM logits differ slightly."
    )
  wanted = {p for p in shapes if head or p[0] == "encoder"}
  return out, ParamsReport(
    model_type=model_type,
    head_imported=head_imported,
    exported=saved is not None,
    source_positions=source_positions,
    positions=positions,
    new=names.dotted(wanted - set(out)),
    unused=tuple(sorted(skipped | unused)),
    notes=tuple(notes),
  )


def import_params(path: str, cfg: ModelConfig) -> tuple[dict[tuple, np.ndarray], ParamsReport]:
  """The parameters a HF (or exported) directory provides for `MaskedLM(cfg)`, any attention,
  max_len, dtype or dropout: {path of `nnx.to_flat_state(nnx.split(model)[1])`: float32 array}.

  Parameters the checkpoint cannot provide (E/F of a HF checkpoint, a missing MLM head) are
  absent and listed in the report's `new`. `cfg` must carry the checkpoint's `CHECKPOINT_FIELDS`
  (`hf_config.config_for_checkpoint`); a difference is an error naming the field.
  """
  hf = read_hf_config(path)
  fields = model_fields_from_hf(hf)
  wrong = {k: v for k, v in fields.items() if getattr(cfg, k) != v}
  if wrong:
    raise HFImportError(
      f"{path!r}: the checkpoint has "
      + ", ".join(f"{k}={v!r} (config.model.{k}={getattr(cfg, k)!r})" for k, v in wrong.items())
      + ". Overlay the checkpoint's fields: config_for_checkpoint(cfg, read_hf_config(path))."
    )
  return params_from_tensors(
    cfg,
    read_safetensors(path),
    hf["model_type"],
    offset=position_offset(hf),
    saved=saved_model_config(hf),
  )


def load_into(
  model: nnx.Module, params: Mapping[tuple, np.ndarray], prefix: tuple = ()
) -> nnx.Module:
  """`model` with every variable that `params` holds (at `prefix + path`) replaced; the others
  keep their values. `model` may be abstract (`nnx.eval_shape`) if `params` covers it all."""
  graphdef, state = nnx.split(model)
  flat = []
  if any(names.is_stacked(prefix + path) for path, _ in nnx.to_flat_state(state)):
    params = names.stack_layers(params)  # a scanned model's layers
  for path, var in nnx.to_flat_state(state):
    if prefix + path in params:
      value = np.asarray(params[prefix + path])
      if tuple(value.shape) != tuple(var.shape):
        raise HFImportError(
          f"{'.'.join(map(str, prefix + path))}: shape {value.shape}, the "
          f"model needs {tuple(var.shape)}."
        )
      var = var.replace(jnp.asarray(value, jnp.float32))
    elif isinstance(var.get_value(), jax.ShapeDtypeStruct):
      raise HFImportError(
        f"No checkpoint tensor maps to the parameter {'.'.join(map(str, prefix + path))}."
      )
    flat.append((path, var))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_masked_lm(
  path: str, cfg: ModelConfig | None = None, *, seed: int = 0
) -> tuple[MaskedLM, ParamsReport]:
  """A `MaskedLM` with the directory's parameters (fresh ones where it has none); `cfg` defaults
  to the checkpoint's own (`model_config_from_hf`)."""
  cfg = model_config_from_hf(read_hf_config(path)) if cfg is None else cfg
  params, report = import_params(path, cfg)
  return load_into(MaskedLM(cfg, rngs=nnx.Rngs(seed)), params), report


def encoder_from_tensors(
  cfg: ModelConfig,
  tensors: Mapping[str, np.ndarray],
  model_type: str,
  offset: int = 0,
  saved: ModelConfig | None = None,
) -> tuple[Encoder, tuple[str, ...]]:
  """An `Encoder` holding the checkpoint's tensors; (encoder, skipped tensor names)."""
  params, report = params_from_tensors(
    cfg, tensors, model_type, offset=offset, saved=saved, head=False
  )
  if report.new:
    raise HFImportError(
      f"No checkpoint tensor maps to the encoder parameter(s) {_listing(report.new)}."
    )
  abstract = nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0)))
  return load_into(abstract, params, ("encoder",)), report.unused


def load_pretrained(path: str, *, dtype: str = "float32", return_report: bool = False):
  """(ModelConfig, Encoder, Tokenizer) of a HuggingFace BERT or RoBERTa (or exported) directory.

  The encoder computes the checkpoint's last hidden states: `encoder(input_ids, attention_mask,
  token_type_ids)`; for a HF checkpoint it has `attention='full'`. `dtype` is the computation
  dtype (parameters stay float32). With `return_report=True` an `ImportReport` is returned fourth.
  """
  hf = read_hf_config(path)
  cfg = model_config_from_hf(hf, dtype)
  offset = position_offset(hf)
  encoder, skipped = encoder_from_tensors(
    cfg, read_safetensors(path), hf["model_type"], offset, saved_model_config(hf)
  )
  if not any(
    os.path.exists(os.path.join(path, f)) for f in (TOKENIZER_FILE, "sentencepiece.model")
  ):
    raise FileNotFoundError(
      f"{path!r}: no {TOKENIZER_FILE}. Save it with the model's fast "
      "tokenizer: AutoTokenizer.from_pretrained(...).save_pretrained(dir)."
    )
  tokenizer = Tokenizer.load(path)
  if tokenizer.vocab_size > cfg.vocab_size:
    raise HFImportError(
      f"{path} has a tokenizer with {tokenizer.vocab_size} ids but the "
      f"embedding table has {cfg.vocab_size} rows: tokenizer and weights do not "
      "belong together."
    )
  if return_report:
    return cfg, encoder, tokenizer, ImportReport(hf["model_type"], skipped, offset)
  return cfg, encoder, tokenizer
