"""The encoder's configuration, checked before anything is built or compiled.

`ModelConfig` is a frozen dataclass so a model's shape is hashable and comparable (the training
code compares a workdir's saved config with the requested one). Every check raises a
`ConfigError` naming the field as users write it in a config file (`config.model.<field>`) and
saying how to fix it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax

ATTENTION_KINDS = ("linformer", "full", "lsh")
SHARING_MODES = ("none", "headwise", "kv", "layerwise")
PROJECTIONS = ("learned", "random", "mean_pool", "max_pool", "conv")
PROJECTION_INITS = ("normal", "pool", "auto")  # auto: resolved by the run (loop.py)
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION_IMPLS = (None, "xla", "cudnn")
# What a rematerialized layer (remat=True) keeps from its forward pass for the backward pass
# (model.REMAT_POLICIES maps each to jax.checkpoint_policies): 'full' only its input, so every
# matmul runs again; 'save_dots' every matmul output; 'save_dots_no_batch' those without a batch
# dimension (the projections, not attention's scores); 'save_qkv_proj' the query, key and value
# projections.
REMAT_POLICIES = ("full", "save_dots", "save_dots_no_batch", "save_qkv_proj")
# scan_layers=None scans deeper models than this: below, unrolling compiles fast enough.
SCAN_LAYERS_ABOVE = 4


class ConfigError(ValueError):
  """A configuration value that cannot work; the message names the field and the fix."""


def resolve_dtype(dtype: str, platform: str | None = None) -> str:
  """'auto' computes in bfloat16 on GPU and TPU, whose matrix units run it at several times the
  float32 rate, and in float32 on CPU, where bfloat16 is emulated and slower (and CPU results
  stay those of float32). Other values are returned as given."""
  if dtype != "auto":
    return dtype
  return "float32" if (platform or jax.default_backend()) == "cpu" else "bfloat16"


def _field_error(field: str, value: Any, problem: str, fix: str) -> ConfigError:
  return ConfigError(f"config.model.{field}={value!r}: {problem}. Fix: {fix}.")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and behaviour of the encoder. Defaults are RoBERTa-base with Linformer k=128."""

  vocab_size: int = 50265
  # The embedding table (and MLM bias) has vocab_size rounded up to a multiple of this many rows,
  # so that it shards over the mesh (50265 and 30522 divide no axis above 2; lm1b and MaxText
  # pad to 128 too). The padded rows start at zero, are never looked up, and the heads return
  # logits of the vocab_size real ids only, so the padded rows never win and stay zero.
  vocab_multiple: int = 128
  max_len: int = 512  # n: the longest sequence the model accepts (position embeddings, E and F).
  num_layers: int = 12
  hidden_size: int = 768
  num_heads: int = 12
  mlp_dim: int = 3072
  attention: str = "linformer"  # linformer | full | lsh
  # Causal (decoder) attention: a token sees no later position. For Linformer this is the
  # segment-wise causal projection (attention.py): segments of `segment_len` tokens (c), each
  # compressed to r = k c / max_len rows seen only by later segments.
  causal: bool = False
  segment_len: int = 0
  # Projected length: one int for every layer, or one per layer (the paper's nonuniform k).
  k: int | tuple[int, ...] = 128
  sharing: str = "none"  # none | headwise | kv | layerwise
  projection: str = "learned"  # learned | random | mean_pool | max_pool | conv
  # How a learned E/F starts: 'normal' N(0, 1/n), or 'pool' = mean pooling over n/k windows
  # (close to the full attention of a converted pretrained model; see attention.SeqProjection).
  projection_init: str = "normal"
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  # Dropout on the MLP's GELU output (fairseq's activation_dropout): 0 in BERT and RoBERTa, whose
  # only MLP dropout is dropout_rate on its output.
  activation_dropout_rate: float = 0.0
  pre_ln: bool = False  # RoBERTa is post-LN; pre-LN adds a final LayerNorm.
  layer_norm_eps: float = 1e-5
  type_vocab_size: int = 0  # 0: no token-type embeddings (RoBERTa); 2 for BERT checkpoints.
  gelu_approximate: bool = False  # RoBERTa and BERT use the exact (erf) GELU.
  # Computation dtype; parameters and optimizer state are always float32. 'auto': bfloat16 on
  # GPU and TPU, float32 on CPU (resolve_dtype; the training loop records the concrete value).
  dtype: str = "auto"
  remat: bool = False  # recompute each layer's activations in the backward pass.
  remat_policy: str = "full"  # what remat keeps (REMAT_POLICIES)
  # Store the layers' parameters stacked (a leading `layers` axis) and run them as one
  # `lax.scan`: XLA compiles one layer, not num_layers, and the optimizer updates one array per
  # kind of parameter, so compile time stays flat in depth (MaxText, big_vision). None: scan
  # more than SCAN_LAYERS_ABOVE layers when they can be stacked (one k, not layerwise sharing).
  # HF import/export and init_from convert between the two forms (convert/names.py).
  scan_layers: bool | None = None
  # The attention kernel: None, the project's einsums (attention.attend); 'xla' or 'cudnn',
  # jax.nn.dot_product_attention's implementation when attention dropout is off ('cudnn' is
  # flash attention on NVIDIA GPUs, float16/bfloat16 only; full attention with cuDNN needs
  # attention_dropout_rate=0, as cuDNN's API here has no dropout).
  attention_impl: str | None = None
  # LSH attention (attention='lsh'; Reformer, Kitaev et al. 2020; lsh.lsh_attend): one
  # projection gives queries and keys (keys are the unit-length queries), hashed lsh_rounds times
  # into lsh_buckets buckets by random rotations; tokens are sorted by bucket and cut into chunks
  # of lsh_chunk_len, and a query attends to the keys of its own bucket in its chunk and the one
  # before. lsh_buckets=None takes the paper's 2 max_len / lsh_chunk_len (a bucket averages half
  # a chunk). Training draws the rotations from the dropout stream at every call; evaluation
  # (deterministic=True) always hashes with the rotations of lsh_seed, so it is repeatable.
  lsh_buckets: int | None = None
  lsh_rounds: int = 4
  lsh_chunk_len: int = 64
  lsh_seed: int = 0

  def __post_init__(self):
    if isinstance(self.k, Sequence) and not isinstance(self.k, str):
      object.__setattr__(self, "k", tuple(int(v) for v in self.k))
    object.__setattr__(self, "dtype", resolve_dtype(self.dtype))
    self.validate()

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
    """Builds from a ConfigDict or dict; unknown keys are an error, not silently ignored."""
    values = dict(values)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ConfigError(
        f"config.model has unknown field(s) {unknown}. Known fields: {sorted(known)}."
      )
    return cls(**values)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["k"] = list(self.k) if isinstance(self.k, tuple) else self.k
    return d

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def padded_vocab_size(self) -> int:
    """Rows of the embedding table: vocab_size rounded up to a multiple of vocab_multiple."""
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

  @property
  def lsh_num_buckets(self) -> int:
    """Buckets of LSH attention: `lsh_buckets`, or 2 max_len / lsh_chunk_len when None."""
    if self.lsh_buckets is None:
      return max(2, 2 * self.max_len // self.lsh_chunk_len)
    return self.lsh_buckets

  @property
  def scanned(self) -> bool:
    """Whether the layers run under one scan (`scan_layers`, resolved)."""
    if self.scan_layers is None:
      return self.num_layers > SCAN_LAYERS_ABOVE and self._why_unstackable is None
    return self.scan_layers

  @property
  def _why_unstackable(self) -> str | None:
    """Why the layers cannot be stacked, or None."""
    if self.attention != "linformer":
      return None
    if len(set(self.layer_ks)) > 1:
      return f"k={self.k} differs between layers, and a scan runs one layer shape"
    if self.sharing == "layerwise":
      return "sharing='layerwise' uses one E for every layer, which a stack cannot hold"
    return None

  @property
  def layer_ks(self) -> tuple[int, ...]:
    """k for each layer."""
    if isinstance(self.k, tuple):
      return self.k
    return (self.k,) * self.num_layers

  def validate(self) -> None:
    for name in (
      "vocab_size",
      "vocab_multiple",
      "max_len",
      "num_layers",
      "hidden_size",
      "num_heads",
      "mlp_dim",
    ):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise _field_error(name, value, "must be a positive integer", f"set {name} > 0")
    if self.hidden_size % self.num_heads:
      raise _field_error(
        "hidden_size",
        self.hidden_size,
        f"not divisible by num_heads={self.num_heads}",
        "choose hidden_size a multiple of num_heads (e.g. 768 with 12 heads)",
      )
    if self.attention not in ATTENTION_KINDS:
      raise _field_error(
        "attention", self.attention, "unknown attention kind", f"use one of {ATTENTION_KINDS}"
      )
    for name in ("dropout_rate", "attention_dropout_rate", "activation_dropout_rate"):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        raise _field_error(name, value, "must be in [0, 1)", "use e.g. 0.1, or 0.0 for none")
    if self.dtype not in DTYPES:
      raise _field_error("dtype", self.dtype, "unknown dtype", f"use one of {DTYPES}")
    if self.remat_policy not in REMAT_POLICIES:
      raise _field_error(
        "remat_policy", self.remat_policy, "unknown policy", f"use one of {REMAT_POLICIES}"
      )
    if self.scan_layers not in (None, True, False):
      raise _field_error(
        "scan_layers", self.scan_layers, "must be True, False or None", "None chooses by depth"
      )
    if self.scan_layers and self._why_unstackable:
      raise _field_error(
        "scan_layers", True, self._why_unstackable, "set scan_layers=False, or None to choose"
      )
    if self.attention_impl not in ATTENTION_IMPLS:
      raise _field_error(
        "attention_impl",
        self.attention_impl,
        "unknown implementation",
        f"use one of {ATTENTION_IMPLS}",
      )
    if self.attention_impl == "cudnn" and self.dtype == "float32":
      raise _field_error(
        "attention_impl",
        "cudnn",
        "cuDNN flash attention needs float16 or bfloat16",
        "set config.model.dtype='bfloat16', or attention_impl=None",
      )
    if self.attention_impl == "cudnn" and self.attention == "full" and self.attention_dropout_rate:
      # jax.nn.dot_product_attention has no dropout: training would silently take the explicit
      # path, with (b, h, n, n) float32 logits, weights and dropout mask, the slow baseline.
      raise _field_error(
        "attention_dropout_rate",
        self.attention_dropout_rate,
        "full attention with attention_impl='cudnn' trains through cuDNN, which has no attention "
        "dropout",
        "set config.model.attention_dropout_rate=0 (the dropout of the other layers stays), or "
        "attention_impl=None for the explicit path with dropout",
      )
    if self.type_vocab_size < 0:
      raise _field_error(
        "type_vocab_size",
        self.type_vocab_size,
        "must be >= 0",
        "use 0 (no token types) or 2 (BERT)",
      )
    if self.attention == "linformer":
      self._validate_linformer()
      if self.causal:
        self._validate_causal_linformer()
    if self.attention == "lsh":
      self._validate_lsh()

  def _validate_lsh(self) -> None:
    c, n = self.lsh_chunk_len, self.max_len
    if not isinstance(c, int) or c <= 0 or n % c:
      raise _field_error(
        "lsh_chunk_len",
        c,
        f"LSH attention cuts the sorted max_len={n} tokens into chunks of lsh_chunk_len",
        f"set lsh_chunk_len to a divisor of max_len (e.g. {_divisor_near(n, 64)})",
      )
    b = self.lsh_buckets
    if b is not None and (not isinstance(b, int) or b < 2 or b % 2):
      raise _field_error(
        "lsh_buckets",
        b,
        "the angular hash argmax([xR; -xR]) gives an even number of buckets, at least 2",
        f"use an even number >= 2, or None for 2 max_len / lsh_chunk_len = {max(2, 2 * n // c)}",
      )
    if not isinstance(self.lsh_rounds, int) or self.lsh_rounds < 1:
      raise _field_error(
        "lsh_rounds", self.lsh_rounds, "must be an integer >= 1", "e.g. 4 (8 is closer to full)"
      )
    if not isinstance(self.lsh_seed, int) or self.lsh_seed < 0:
      raise _field_error(
        "lsh_seed", self.lsh_seed, "must be an integer >= 0", "e.g. 0 (evaluation's rotations)"
      )
    if self.causal:
      raise _field_error(
        "causal",
        True,
        "LSH attention is built bidirectional only (no causal mask in its chunks, no decoding "
        "cache)",
        "set causal=False, or attention='linformer' or 'full' for a decoder",
      )
    if self.attention_impl is not None:
      raise _field_error(
        "attention_impl",
        self.attention_impl,
        "LSH attention runs its own chunked einsums; dot_product_attention's kernels do not apply",
        "use attention_impl=None with attention='lsh'",
      )

  def _validate_linformer(self) -> None:
    if self.sharing not in SHARING_MODES:
      raise _field_error(
        "sharing", self.sharing, "unknown sharing mode", f"use one of {SHARING_MODES}"
      )
    if self.projection not in PROJECTIONS:
      raise _field_error(
        "projection", self.projection, "unknown projection kind", f"use one of {PROJECTIONS}"
      )
    if self.projection_init not in PROJECTION_INITS:
      raise _field_error(
        "projection_init",
        self.projection_init,
        "unknown initialisation",
        f"use one of {PROJECTION_INITS}",
      )
    if isinstance(self.k, tuple):
      if len(self.k) != self.num_layers:
        raise _field_error(
          "k",
          self.k,
          f"has {len(self.k)} entries for num_layers={self.num_layers}",
          "give one k per layer, or a single int for all layers",
        )
      if self.sharing == "layerwise" and len(set(self.k)) > 1:
        raise _field_error(
          "k",
          self.k,
          "layerwise sharing uses one matrix for every layer, so one k",
          "use a single k with sharing='layerwise', or sharing='kv' for per-layer k",
        )
    elif not isinstance(self.k, int):
      raise _field_error("k", self.k, "must be an int or a list of ints", "e.g. k=128")
    for i, k in enumerate(self.layer_ks):
      where = f"k[{i}]" if isinstance(self.k, tuple) else "k"
      if k <= 0:
        raise _field_error(where, k, "must be positive", "e.g. k=128")
      if k > self.max_len:
        raise _field_error(
          where,
          k,
          f"is larger than the sequence length max_len={self.max_len}",
          "use k <= max_len (k = n/4 is the paper's default)",
        )
      if self.projection in ("mean_pool", "max_pool", "conv") and self.max_len % k:
        raise _field_error(
          where,
          k,
          f"{self.projection} uses kernel and stride max_len/k, but "
          f"max_len={self.max_len} is not divisible by k",
          "choose k dividing max_len (e.g. 512 with k in 64, 128, 256)",
        )

  def _validate_causal_linformer(self) -> None:
    c, n = self.segment_len, self.max_len
    if not isinstance(c, int) or c <= 0 or n % c:
      raise _field_error(
        "segment_len",
        c,
        f"a causal Linformer cuts max_len={n} into segments of segment_len tokens",
        f"set segment_len to a divisor of max_len (e.g. {_divisor_near(n, 64)})",
      )
    if self.attention_impl == "cudnn":
      raise _field_error(
        "attention_impl",
        "cudnn",
        "the causal Linformer's segment mask is not a cuDNN length or causal mask",
        "use attention_impl=None with causal=True and attention='linformer'",
      )
    for i, k in enumerate(self.layer_ks):
      where = f"k[{i}]" if isinstance(self.k, tuple) else "k"
      if (k * c) % n or k * c < n:
        raise _field_error(
          where,
          k,
          f"each of the max_len/segment_len={n // c} segments gets k*segment_len/max_len "
          f"compressed rows, which must be a whole number >= 1 (segment_len={c})",
          f"use k a multiple of {n // c} (e.g. k={max(n // c, (k // (n // c)) * (n // c))})",
        )


def _divisor_near(n: int, target: int) -> int:
  """The divisor of n closest to target (for suggestions in error messages)."""
  return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - target))
