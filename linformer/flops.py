r"""Model FLOPs and device peak FLOP/s: the numerator and the denominator of MFU, for the
training loop (`training/meter.py`) and the benchmarks.

Model FLOPs (the numerator of MFU): matrix multiplications only, each (m x k) @ (k x n) product
counted 2 m k n. Not counted: embedding lookups (gathers), LayerNorm, GELU, softmax, dropout, the
loss and the optimizer. With n tokens per sequence, width H, MLP width F, k the projected length
(k' = number of windows for pool and conv projections), m predicted slots, vocabulary V:

    per layer   Q, output dense            2 n H^2 each
                MLP (in and out)           2 * 2 n H F
                K, V dense                 full, or Linformer with per-head or max-pool
                                             projections: 2 n H^2 each; Linformer, shared
                                             linear projection (headwise, kv, layerwise:
                                             `_project_inputs_first`): 2 k H^2 each
                sequence projection        learned/random E, F: 2 k n H each (projecting the
                  (Linformer only)           inputs first also applies E to the all-ones
                                             column, 2 k n each); conv: 2 n H each; mean and
                                             max pooling: none
                attention scores Q K^T     full: 2 n^2 H;  Linformer: 2 n k' H
                attention output P V       full: 2 n^2 H;  Linformer: 2 n k' H
    MLM head    dense, tied decoder        2 m H^2, 2 m H V (at the m masked slots only)
    CLM head    dense, tied decoder        2 n H^2, 2 n H V (the next token at every position)
    finetune    dense, output              2 H^2, 2 H labels (at the first token)

LSH attention (`attention='lsh'`, chunks of c, R rounds, B buckets, the input padded to whole
chunks): Q and V dense only (the keys are the unit-length queries), the hash 2 n H (B/2) R (part
`lsh_hash`), per round Q K^T and P V against the 2c keys of a query's chunk and the one before
(2 n 2c H each), and the rounds' combination 2 n H R. Sorting and gathers are not matmuls.

For `kv` and `layerwise` sharing the code calls the projection for K and for V separately; both
calls count. Causal attention (`cfg.causal`): full attention is counted as the non-causal one, as
the masked-out half of Q K^T and P V is computed anyway; the causal Linformer (segments of c
tokens, r = k c / n compressed rows each) adds the c keys of a query's own segment to Q K^T and
P V (2 n (k' + c) H each), its block-diagonal E costs 2 r n H (r in place of k), and with the
inputs projected first the K, V dense also runs on all n tokens (the local keys).

Training = 3 x forward (the backward of a matmul is two matmuls of its size), except a fixed
`random` projection, whose matrix gets no gradient: 2 x, and LSH's hash, whose argmax passes no
gradient: 1 x. Rematerialisation's recomputed forward
is not counted (model FLOPs, not hardware FLOPs). For a training loop, with
`peak, source = peak_flops(cfg.dtype, devices)`:

    MFU = tokens/s * train_flops_per_token(cfg, task, n) / (peak * len(devices))
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from linformer.config import ModelConfig

MASK_PROB = 0.15  # the MLM pipeline's default: m = ceil(0.15 n) (data.mlm.default_max_predictions)
TASKS = ("encoder", "mlm", "clm", "finetune")

# ---------------------------------------------------------------------------------------------
# Model FLOPs (see the module docstring).


def forward_flops(
  cfg: ModelConfig,
  n: int,
  task: str = "encoder",
  num_predictions: int | None = None,
  num_labels: int = 2,
) -> dict[str, float]:
  """Matmul FLOPs of one length-n sequence through the forward pass, by part.

  task: 'encoder' (no head: inference of the layer stack), 'mlm' (MaskedLM's head at
  `num_predictions` slots, default ceil(0.15 n)), 'clm' (CausalLM's head at all n positions) or
  'finetune' (SequenceClassifier's head). Causal attention follows `cfg.causal` (module
  docstring).
  """
  if task not in TASKS:
    raise ValueError(f"task={task!r}: use one of {TASKS}")
  hid, f = cfg.hidden_size, cfg.mlp_dim
  parts = dict(qo_dense=0.0, kv_dense=0.0, mlp=0.0, seq_proj=0.0, attention=0.0)
  for layer in range(cfg.num_layers):
    parts["qo_dense"] += 2 * (2 * n * hid * hid)
    parts["mlp"] += 2 * (2 * n * hid * f)
    if cfg.attention == "full":
      parts["kv_dense"] += 2 * (2 * n * hid * hid)
      parts["attention"] += 2 * (2 * n * n * hid)
      continue
    if cfg.attention == "lsh":
      c, rounds = cfg.lsh_chunk_len, cfg.lsh_rounds
      padded = -(-n // c) * c  # the input is padded to whole chunks before Q and V
      parts["qo_dense"] += 2 * (padded - n) * hid * hid
      parts["kv_dense"] += 2 * padded * hid * hid  # V only: the keys are the queries
      parts["lsh_hash"] = (
        parts.get("lsh_hash", 0.0) + 2 * padded * hid * (cfg.lsh_num_buckets // 2) * rounds
      )
      parts["attention"] += rounds * 2 * (2 * padded * 2 * c * hid) + 2 * rounds * padded * hid
      continue
    k = cfg.layer_ks[layer]
    pooled = cfg.projection in ("mean_pool", "max_pool", "conv")
    keys = math.ceil(n / (cfg.max_len // k)) if pooled else k  # windows of an n-token input
    inputs_first = cfg.sharing != "none" and cfg.projection != "max_pool"
    local = cfg.segment_len if cfg.causal else 0  # the causal Linformer's own-segment keys
    rows = k * local // cfg.max_len if local else k  # rows of E that mix each token
    parts["kv_dense"] += 2 * (2 * (keys if inputs_first else n) * hid * hid)
    if local and inputs_first:
      parts["kv_dense"] += 2 * (2 * n * hid * hid)  # the local keys and values of every token
    if cfg.projection in ("learned", "random"):
      parts["seq_proj"] += 2 * (2 * rows * n * hid)
      if inputs_first:
        parts["seq_proj"] += 2 * (2 * rows * n)  # E applied to the all-ones (bias) column
    elif cfg.projection == "conv":
      parts["seq_proj"] += 2 * (2 * n * hid)
    parts["attention"] += 2 * (2 * n * (keys + local) * hid)
  if task == "mlm":
    m = num_predictions if num_predictions is not None else math.ceil(MASK_PROB * n)
    parts["mlm_head"] = 2 * m * hid * hid + 2 * m * hid * cfg.vocab_size
  elif task == "clm":
    parts["lm_head"] = 2 * n * hid * hid + 2 * n * hid * cfg.vocab_size
  elif task == "finetune":
    parts["cls_head"] = 2 * hid * hid + 2 * hid * num_labels
  return parts


def train_flops(
  cfg: ModelConfig,
  n: int,
  task: str = "mlm",
  num_predictions: int | None = None,
  num_labels: int = 2,
) -> dict[str, float]:
  """Matmul FLOPs of one length-n sequence through forward and backward, by part."""
  parts = forward_flops(cfg, n, task, num_predictions, num_labels)
  fixed = cfg.attention == "linformer" and cfg.projection == "random"
  factor = lambda key: 1.0 if key == "lsh_hash" else 2.0 if key == "seq_proj" and fixed else 3.0
  return {key: factor(key) * v for key, v in parts.items()}


def train_flops_per_token(
  cfg: ModelConfig, task: str, n: int, num_predictions: int | None = None, num_labels: int = 2
) -> float:
  """Model FLOPs of one training token (forward + backward); x tokens/s = model FLOP/s."""
  return sum(train_flops(cfg, n, task, num_predictions, num_labels).values()) / n


def inference_flops_per_token(
  cfg: ModelConfig,
  n: int,
  task: str = "encoder",
  num_predictions: int | None = None,
  num_labels: int = 2,
) -> float:
  """Model FLOPs of one token through the forward pass."""
  return sum(forward_flops(cfg, n, task, num_predictions, num_labels).values()) / n


# ---------------------------------------------------------------------------------------------
# Device peak FLOP/s: datasheet numbers, dense (no structured sparsity), per JAX device, TFLOP/s.
# 'float32' is true IEEE float32 (CUDA cores); 'tfloat32' the TF32 tensor-core rate. Sources:
#   H100 SXM / PCIe / NVL: NVIDIA H100 Tensor Core GPU datasheet
#     (nvidia.com/en-us/data-center/h100); its TF32 and BF16 figures are with sparsity, halved here.
#   H200 / H200 NVL: NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200), likewise halved.
#   A100 (SXM and PCIe, 40 and 80 GB): NVIDIA A100 datasheet (nvidia.com/en-us/data-center/a100).
#   V100 SXM2 / PCIe: NVIDIA V100 datasheet (nvidia.com/en-us/data-center/v100); no bfloat16
#     hardware (XLA emulates it), so none; float16 tensor cores 125 / 112.
#   L4: NVIDIA L4 datasheet (nvidia.com/en-us/data-center/l4), sparse figures halved.
#   TPU v4 275, v5e 197, v5p 459, v6e 918 bf16 TFLOP/s per chip (one JAX device per chip):
#     cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e. Google publishes no float32 rate.
# Patterns match `device.device_kind` lowercased, first match wins (so 'v5 lite' before 'v5').
_PEAKS = (
  (r"h100.*pcie", "H100 PCIe", dict(bfloat16=756, float16=756, tfloat32=378, float32=51)),
  (r"h100.*nvl", "H100 NVL", dict(bfloat16=835.5, float16=835.5, tfloat32=417.5, float32=60)),
  (r"h100", "H100 SXM", dict(bfloat16=989.4, float16=989.4, tfloat32=494.7, float32=66.9)),
  (r"h200.*nvl", "H200 NVL", dict(bfloat16=835.5, float16=835.5, tfloat32=417.5, float32=60)),
  (r"h200", "H200", dict(bfloat16=989.4, float16=989.4, tfloat32=494.7, float32=66.9)),
  (r"a100", "A100", dict(bfloat16=312, float16=312, tfloat32=156, float32=19.5)),
  (r"v100.*pcie", "V100 PCIe", dict(float16=112, float32=14)),
  (r"v100", "V100 SXM2", dict(float16=125, float32=15.7)),
  (r"\bl4\b", "L4", dict(bfloat16=121, float16=121, tfloat32=60, float32=30.3)),
  (r"^tpu v4$", "TPU v4", dict(bfloat16=275)),
  (r"^tpu v5 ?(lite|e)", "TPU v5e", dict(bfloat16=197)),
  (r"^tpu v5p?$", "TPU v5p", dict(bfloat16=459)),
  (r"^tpu v6 ?(lite|e)", "TPU v6e", dict(bfloat16=918)),
)
_SHORT = dict(bfloat16="bf16", float16="fp16", tfloat32="tf32", float32="fp32")


def _lookup(kind: str, dtype: str, default_precision: bool) -> tuple[float, str] | None:
  dtype = jnp.dtype(dtype).name
  for pattern, name, rates in _PEAKS:
    if re.search(pattern, kind.lower().strip()):
      if dtype == "float32" and default_precision:
        # JAX's default precision runs float32 matmuls as TF32 on Ampere and later NVIDIA GPUs
        # and as one bfloat16 pass on TPUs (docs.jax.dev, "Matmul precision").
        dtype = next((d for d in ("tfloat32", "bfloat16") if d in rates), dtype)
      rate = rates.get(dtype)
      return None if rate is None else (rate * 1e12, f"{name} {_SHORT[dtype]}")
  return None


def device_peak_flops(
  device, dtype: str = "bfloat16", default_precision: bool = True
) -> float | None:
  """Datasheet peak FLOP/s of one device (a `jax.Device` or its `device_kind` string) for
  matmuls in `dtype`, or None when the device or dtype is not in the table.

  float32 with `default_precision` is the rate of JAX's default matmul precision (TF32 on
  A100/H100/H200/L4, bfloat16 on TPUs); False asks for true float32 (None on TPUs).
  """
  kind = device if isinstance(device, str) else device.device_kind
  found = _lookup(kind, dtype, default_precision)
  return found and found[0]


def matmul_rate(size: int, repeats: int, dtype="float32", device=None) -> float:
  """Best FLOP/s of a jitted size x size x size matmul on `device` (default: the first)."""
  put = functools.partial(jax.device_put, device=device or jax.devices()[0])
  a = put(jax.random.normal(jax.random.key(0), (size, size), dtype))
  b = put(jax.random.normal(jax.random.key(1), (size, size), dtype))
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


@functools.cache
def _measured_peak(device, dtype: str) -> float:
  """Measured once per device and dtype: 1024^3 on a CPU (6 x 2 GFLOP, under 1 s on 2 cores)."""
  size = 1024 if device.platform == "cpu" else 4096
  return matmul_rate(size, repeats=5, dtype=dtype, device=device)


def peak_flops(dtype: str = "float32", devices: Sequence | None = None) -> tuple[float, str]:
  """Per-device peak FLOP/s for MFU and where it came from: the datasheet table
  ('table:H100 SXM bf16') when every device is in it, else the matmul rate of the first device,
  measured once per device and dtype (cached): 'measured matmul rate'."""
  devices = list(devices or jax.devices())
  found = {_lookup(d.device_kind, dtype, True) for d in devices}
  if len(found) == 1 and None not in found:
    rate, name = found.pop()
    return rate, f"table:{name}"
  return _measured_peak(devices[0], jnp.dtype(dtype).name), "measured matmul rate"
