"""The one table between the project's `MaskedLM` parameter paths and HF BERT/RoBERTa tensor names.

Import (`hf_import`) and export (`export`) both read it, so a parameter written under a name is
read back from that name with the exact inverse transform: a round trip changes no bit.

Paths are those of `nnx.to_flat_state(nnx.split(MaskedLM(cfg))[1])` with the layers one by one,
e.g. `("encoder", "layers", 0, "attention", "query", "kernel")`. A scanned model
(`ModelConfig.scan_layers`) stores `("encoder", "layers", "attention", "query", "kernel")` with a
leading axis of layers: `unstack_layers` and `stack_layers` convert, so every mapping that crosses
a module boundary (import, export, warm starts) is in the per-layer form. Names are without the
`bert.` / `roberta.` prefix of the `*ForMaskedLM` checkpoints (the caller adds or strips it).

Parameters HF has no name for are written under `linformer.*`:

    linformer.encoder.layer.{i}.attention.E.{matrix|kernel}   sharing none / headwise: E_i, F_i
    linformer.encoder.layer.{i}.attention.F.{matrix|kernel}   (matrix: (heads,) k, n; kernel: taps)
    linformer.encoder.layer.{i}.attention.EF.{...}            sharing kv: one matrix used as E and F
    linformer.encoder.EF.{...}                                sharing layerwise: one for the model
    linformer.encoder.final_norm.{weight,bias}                pre-LN's final LayerNorm
    linformer.tree.<path joined by dots>                      anything else in the tree
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from linformer.config import ConfigError, ModelConfig

LINFORMER_PREFIX = "linformer."
POSITIONS = ("encoder", "embeddings", "position", "embedding")
TOKEN_TYPES = ("encoder", "embeddings", "token_type", "embedding")
WORDS = ("encoder", "embeddings", "token", "embedding")
MLM_BIAS = ("mlm_bias",)
VOCAB_ROWS = (WORDS, MLM_BIAS)  # a row per vocabulary id, padded to ModelConfig.vocab_multiple
LAYERS = ("encoder", "layers")


def is_stacked(path: tuple) -> bool:
  """A scanned model's path: the layers' parameters under one name with a leading layer axis."""
  return path[:2] == LAYERS and len(path) > 2 and not isinstance(path[2], int)


def _layer_of(path: tuple) -> tuple[int, tuple] | None:
  """(layer, path with the layer index dropped) of a per-layer path, else None."""
  if path[:2] == LAYERS and len(path) > 2 and isinstance(path[2], int):
    return path[2], LAYERS + path[3:]
  return None


def unstack_layers(flat: Mapping[tuple, np.ndarray]) -> dict[tuple, np.ndarray]:
  """`flat` with every stacked layer array split into one entry per layer."""
  out = {}
  for path, value in flat.items():
    if is_stacked(path):
      out.update({LAYERS + (i,) + path[2:]: value[i] for i in range(len(value))})
    else:
      out[path] = value
  return out


def unstack_shapes(shapes: Mapping[tuple, tuple]) -> dict[tuple, tuple]:
  """{path: shape} in the per-layer form (`unstack_layers` of shapes)."""
  out = {}
  for path, shape in shapes.items():
    if is_stacked(path):
      out.update({LAYERS + (i,) + path[2:]: tuple(shape[1:]) for i in range(shape[0])})
    else:
      out[path] = tuple(shape)
  return out


def stack_layers(flat: Mapping[tuple, np.ndarray]) -> dict:
  """Per-layer `flat` in a scanned model's layout: each layer parameter's arrays (layers 0, 1,
  ... as present) stacked on a new leading axis."""
  out, groups = {}, collections.defaultdict(dict)
  for path, value in flat.items():
    layer = _layer_of(path)
    if layer is None:
      out[path] = value
    else:
      groups[layer[1]][layer[0]] = value
  for path, layers in groups.items():
    if sorted(layers) == list(range(len(layers))):
      out[path] = np.stack([np.asarray(layers[i]) for i in range(len(layers))])
    else:  # a gap: left per layer, so the model's stacked path reads as missing
      out.update({LAYERS + (i,) + path[2:]: v for i, v in layers.items()})
  return out


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One parameter: its project path, HF name and the two (exactly inverse) transforms."""

  path: tuple
  name: str
  to_project: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]
  head: bool = False  # part of the MLM head (optional in a checkpoint)


def _same(a):
  return a


def _transpose(a):  # nn.Linear weight (out, in) <-> kernel (in, out)
  return a.T


def _vocab_rows(cfg: ModelConfig):
  """(to_project, to_hf) for tensors with a row per vocabulary id: HF has `vocab_size` rows, the
  project's table `padded_vocab_size` (ModelConfig.vocab_multiple), the padding rows zero."""
  pad = cfg.padded_vocab_size - cfg.vocab_size

  def to_project(a):
    if a.shape[0] != cfg.vocab_size:
      raise ValueError(f"{a.shape[0]} rows for vocab_size={cfg.vocab_size}")
    return np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))

  return to_project, lambda a: a[: cfg.vocab_size]


def resize_vocab_rows(value: np.ndarray, path: tuple, rows: int) -> np.ndarray:
  """A project run's vocabulary-row parameter (token embeddings, MLM bias) with `rows` rows: a
  run saved with another vocab_multiple differs only in its zero padding rows."""
  if path not in VOCAB_ROWS or value.shape[0] == rows:
    return value
  if value.shape[0] > rows:
    if np.any(value[rows:]):
      raise ValueError(f"{'.'.join(map(str, path))}: rows {rows}.. are not padding (nonzero)")
    return value[:rows]
  return np.pad(value, [(0, rows - value.shape[0])] + [(0, 0)] * (value.ndim - 1))


def check_convertible(cfg: ModelConfig) -> None:
  """HF BERT and RoBERTa have separate query and key weights and no LSH attention: an LSH model
  (one shared query-key projection) is neither exported to nor imported from their format."""
  if cfg.attention == "lsh":
    raise ConfigError(
      "config.model.attention='lsh': BERT and RoBERTa checkpoints have separate query and key "
      "weights and no LSH attention, so an LSH model is not converted to or from HuggingFace "
      "format. Fix: keep LSH runs in the project's checkpoints (init_from a run's workdir), or "
      "convert a model with attention='full' or 'linformer'."
    )


def hf_tensors(cfg: ModelConfig, model_type: str) -> list[Tensor]:
  """Every parameter HF BERT/RoBERTa has a name for, in `MaskedLM(cfg)`'s paths (none for LSH
  attention: `check_convertible`).

  The position table is listed with identity transforms: its rows depend on the checkpoint's
  position offset and length, which the caller handles (`hf_import.resize_positions`).
  """
  check_convertible(cfg)
  h, d, c = cfg.num_heads, cfg.head_dim, cfg.hidden_size
  e = ("encoder",)
  out = [
    Tensor(WORDS, "embeddings.word_embeddings.weight", *_vocab_rows(cfg)),
    Tensor(POSITIONS, "embeddings.position_embeddings.weight", _same, _same),
    Tensor(e + ("embeddings", "norm", "scale"), "embeddings.LayerNorm.weight", _same, _same),
    Tensor(e + ("embeddings", "norm", "bias"), "embeddings.LayerNorm.bias", _same, _same),
  ]
  if cfg.type_vocab_size:
    out.append(Tensor(TOKEN_TYPES, "embeddings.token_type_embeddings.weight", _same, _same))
  for i in range(cfg.num_layers):
    p, n = e + ("layers", i), f"encoder.layer.{i}."
    for name in ("query", "key", "value"):
      out.append(
        Tensor(
          p + ("attention", name, "kernel"),
          n + f"attention.self.{name}.weight",
          lambda a: a.T.reshape(c, h, d),
          lambda a: a.reshape(c, h * d).T,
        )
      )
      out.append(
        Tensor(
          p + ("attention", name, "bias"),
          n + f"attention.self.{name}.bias",
          lambda a: a.reshape(h, d),
          lambda a: a.reshape(h * d),
        )
      )
    out.append(
      Tensor(
        p + ("attention", "out", "kernel"),
        n + "attention.output.dense.weight",
        lambda a: a.T.reshape(h, d, c),
        lambda a: a.reshape(h * d, c).T,
      )
    )
    out.append(
      Tensor(p + ("attention", "out", "bias"), n + "attention.output.dense.bias", _same, _same)
    )
    for ours, theirs in (
      ("attention_norm", "attention.output.LayerNorm"),
      ("mlp_norm", "output.LayerNorm"),
    ):
      out.append(Tensor(p + (ours, "scale"), n + theirs + ".weight", _same, _same))
      out.append(Tensor(p + (ours, "bias"), n + theirs + ".bias", _same, _same))
    for ours, theirs in (("mlp_in", "intermediate.dense"), ("mlp_out", "output.dense")):
      out.append(Tensor(p + (ours, "kernel"), n + theirs + ".weight", _transpose, _transpose))
      out.append(Tensor(p + (ours, "bias"), n + theirs + ".bias", _same, _same))
  return out + head_tensors(model_type, cfg)


def head_names(model_type: str) -> dict[str, str]:
  """HF names of the MLM head's parts: dense, norm, bias and the tied decoder."""
  if model_type == "roberta":
    base = "lm_head."
    return dict(
      dense=base + "dense", norm=base + "layer_norm", bias=base + "bias", decoder=base + "decoder"
    )
  base = "cls.predictions."
  return dict(
    dense=base + "transform.dense",
    norm=base + "transform.LayerNorm",
    bias=base + "bias",
    decoder=base + "decoder",
  )


def head_tensors(model_type: str, cfg: ModelConfig) -> list[Tensor]:
  """The MLM head (BertForMaskedLM's `cls.predictions` or RobertaForMaskedLM's `lm_head`); its
  decoder is tied to the word embeddings and has no tensor of its own."""
  n = head_names(model_type)
  return [
    Tensor(("mlm_dense", "kernel"), n["dense"] + ".weight", _transpose, _transpose, True),
    Tensor(("mlm_dense", "bias"), n["dense"] + ".bias", _same, _same, True),
    Tensor(("mlm_norm", "scale"), n["norm"] + ".weight", _same, _same, True),
    Tensor(("mlm_norm", "bias"), n["norm"] + ".bias", _same, _same, True),
    Tensor(MLM_BIAS, n["bias"], *_vocab_rows(cfg), True),
  ]


_PROJ = {"proj_k": "E", "proj_v": "F"}
_LAYER_PROJ = re.compile(r"^encoder\.layer\.(\d+)\.attention\.(E|F|EF)\.(\w+)$")


def linformer_name(path: tuple, cfg: ModelConfig) -> str:
  """The `linformer.*` name of a parameter HF BERT has no name for."""
  if (
    len(path) == 6
    and path[:2] == ("encoder", "layers")
    and path[3] == "attention"
    and path[4] in _PROJ
  ):
    layer, proj, leaf = path[2], path[4], path[5]
    if cfg.sharing == "layerwise" and layer == 0 and proj == "proj_k":
      return f"{LINFORMER_PREFIX}encoder.EF.{leaf}"
    if cfg.sharing == "kv" and proj == "proj_k":
      return f"{LINFORMER_PREFIX}encoder.layer.{layer}.attention.EF.{leaf}"
    if cfg.sharing in ("none", "headwise"):
      return f"{LINFORMER_PREFIX}encoder.layer.{layer}.attention.{_PROJ[proj]}.{leaf}"
  if path[:2] == ("encoder", "final_norm"):
    return f"{LINFORMER_PREFIX}encoder.final_norm." + {"scale": "weight"}.get(path[2], path[2])
  return f"{LINFORMER_PREFIX}tree." + ".".join(map(str, path))


def linformer_path(name: str) -> tuple:
  """The project path of a `linformer.*` name (the inverse of `linformer_name`)."""
  rest = name[len(LINFORMER_PREFIX) :]
  if rest.startswith("tree."):
    return tuple(int(p) if p.isdigit() else p for p in rest[len("tree.") :].split("."))
  if rest.startswith("encoder.final_norm."):
    leaf = rest[len("encoder.final_norm.") :]
    return ("encoder", "final_norm", {"weight": "scale"}.get(leaf, leaf))
  if rest.startswith("encoder.EF."):
    return ("encoder", "layers", 0, "attention", "proj_k", rest[len("encoder.EF.") :])
  m = _LAYER_PROJ.match(rest)
  if m is None:
    raise ValueError(f"{name!r} is not a name linformer.convert.export writes.")
  proj = "proj_v" if m.group(2) == "F" else "proj_k"
  return ("encoder", "layers", int(m.group(1)), "attention", proj, m.group(3))


def flatten(tree: Mapping) -> dict[tuple, np.ndarray]:
  """Nested dicts (a checkpoint's `restore_raw` params/rest, an nnx.State, ...) -> {path: array}.

  Orbax stores list indices as strings and each variable as `{"value": array}`; both are undone
  so the paths equal those of `nnx.to_flat_state`.
  """
  out = {}

  def walk(node, path):
    if isinstance(node, Mapping) and not (
      set(node) == {"value"} and not isinstance(node["value"], Mapping)
    ):
      for key, child in node.items():
        walk(child, path + (int(key) if isinstance(key, str) and key.isdigit() else key,))
    else:
      value = node["value"] if isinstance(node, Mapping) else node
      value = value.get_value() if hasattr(value, "get_value") else value
      out[path] = np.asarray(value)

  walk(tree, ())
  return out


def dotted(paths: Iterable[tuple]) -> tuple[str, ...]:
  return tuple(sorted(".".join(map(str, p)) for p in paths))
