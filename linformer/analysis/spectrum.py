r"""Figure 1: the spectrum of full attention's context matrices P = softmax(Q K^T / sqrt(d)).

  python -m linformer.analysis.spectrum --hf_dir=path/to/bert --out_dir=results/spectrum
  python -m linformer.analysis.spectrum --workdir=runs/full --n=512 --k=128 --num_sequences=64 \
      --dataset=wikipedia/20230601.en --split=train --field=text --data_dir=...

For a sample of sequences of length n (no padding: documents in a seeded random order are packed
into one token stream with eos between documents, as in pretraining, and cut into blocks
`[bos] + n-2 tokens + [eos]`), every layer's and head's n x n matrix P is computed, with its
singular values s_1 >= ... >= s_n. The normalized cumulative singular value curve is

    c(i) = (s_1 + ... + s_i) / (s_1 + ... + s_n),   i = 1..n   (stored 0-based: curve[i-1]),

so c(k) is the share of the spectrum held by the top k singular values (c(r) = 1 for a matrix of
rank r). Curves are averaged over the sample per layer and head. Outputs in --out_dir:
`spectrum_curves.png` (one line per layer, averaged over heads: the paper's left panels),
`spectrum_heatmap.png` (c(k) per layer and head) and `spectrum.json` (all the numbers).

The paper's finding: a long tail (c(k) near 1 for k << n), and higher layers more skewed, i.e.
lower rank, i.e. larger c(k). The per-layer mean of c(k) is printed to check it.

P is taken from the model itself: each layer's query and key modules are applied to that layer's
attention input, and the layer's own `__call__` carries the hidden states to the next layer
(`attention_probs`; tests check that P V through the output projection equals the layer's
attention output). Only full-attention models have an n x n P.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from tqdm import tqdm

from linformer.cli import check_output_absl
from linformer.config import ModelConfig
from linformer.convert.hf_import import load_pretrained
from linformer.data.sources import load_text_source
from linformer.data.tokenizer import Tokenizer
from linformer.model import Encoder
from linformer.training.restore import restore_run

# Context matrices.


def _check_full(encoder: Encoder) -> None:
  if encoder.cfg.attention != "full":
    raise ValueError(
      f"The spectrum of P needs full attention, but the model has attention="
      f"{encoder.cfg.attention!r} (its P is n x k). Use a full-attention run "
      "(configs/pretrain.py:attention=full) or an imported HF checkpoint (--hf_dir)."
    )


def context_matrix(attention, x: jax.Array, mask: jax.Array) -> jax.Array:
  """P = softmax(Q K^T / sqrt(d)) of a full `SelfAttention`, (batch, heads, n, n), float32.

  x: the attention's input (batch, n, hidden); mask: (batch, n), true at real tokens (padded keys
  get zero weight, as in the model)."""
  q = attention.query(x)
  k = attention.key(x)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits / jnp.sqrt(jnp.float32(q.shape[-1]))
  logits = jnp.where(mask.astype(bool)[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1)


def attention_probs(
  encoder: Encoder, input_ids, attention_mask, token_type_ids=None
) -> tuple[jax.Array, jax.Array]:
  """(P of every layer (batch, layers, heads, n, n), final hidden states), deterministic."""
  _check_full(encoder)
  mask = attention_mask.astype(bool)
  x = encoder.embeddings(input_ids, token_type_ids, deterministic=True)
  probs = []
  for layer in encoder.layer_list():
    y = layer.attention_norm(x) if layer.pre_ln else x
    probs.append(context_matrix(layer.attention, y, mask))
    x = layer(x, mask, deterministic=True)
  if encoder.cfg.pre_ln:
    x = encoder.final_norm(x)
  return jnp.stack(probs, axis=1), x


# Spectra.


def singular_values(p: jax.Array) -> jax.Array:
  """Singular values over the last two axes, descending, batched over the leading ones."""
  return jnp.linalg.svd(p, compute_uv=False)


def cumulative_curve(s: jax.Array) -> jax.Array:
  """Normalized cumulative singular values: curve[..., i] = sum(s[..., :i+1]) / sum(s)."""
  c = jnp.cumsum(s, axis=-1)
  return c / c[..., -1:]


def value_at(curve, k: int):
  """c(k): the share of the top k singular values (curve index k-1)."""
  return curve[..., k - 1]


@nnx.jit
def _sequence_curves(encoder, input_ids, attention_mask, token_type_ids):
  p, _ = attention_probs(encoder, input_ids, attention_mask, token_type_ids)
  return cumulative_curve(singular_values(p))  # (batch, layers, heads, n)


# Data.


def sample_sequences(
  texts: Sequence[str],
  tokenizer: Tokenizer,
  n: int,
  num_sequences: int,
  seed: int = 0,
  docs_per_call: int = 64,
) -> np.ndarray:
  """Up to `num_sequences` blocks (S, n) of `[bos] + n-2 tokens + [eos]`, no padding.

  Documents are read in a seeded random order and packed (eos after each) until enough tokens;
  a corpus that is too small gives fewer blocks (the caller reports it)."""
  if n < 3:
    raise ValueError(f"--n={n}: need n >= 3 (bos, a token, eos).")
  body = n - 2
  need = num_sequences * body
  order = np.random.default_rng(seed).permutation(len(texts))
  stream, have = [], 0
  for start in range(0, len(order), docs_per_call):
    batch = [texts[int(i)] for i in order[start : start + docs_per_call]]
    for ids in tokenizer.encode_batch(batch):
      if ids:
        stream.append(np.asarray(ids + [tokenizer.eos_id], np.int32))
        have += len(ids) + 1
    if have >= need:
      break
  tokens = np.concatenate(stream) if stream else np.zeros([0], np.int32)
  count = min(num_sequences, len(tokens) // body)
  blocks = tokens[: count * body].reshape(count, body)
  bos = np.full((count, 1), tokenizer.bos_id, np.int32)
  eos = np.full((count, 1), tokenizer.eos_id, np.int32)
  return np.concatenate([bos, blocks, eos], axis=1)


# The analysis.


def analyze(
  encoder: Encoder, sequences: np.ndarray, k: int, batch_size: int = 4, progress: bool = True
) -> dict:
  """Mean curves and c(k) over `sequences` (S, n) of real tokens."""
  _check_full(encoder)
  num, n = sequences.shape
  if num == 0:
    raise ValueError("No sequence to analyse: the dataset has fewer than n-2 tokens.")
  if not 1 <= k <= n:
    raise ValueError(f"--k={k}: must be in [1, n={n}].")
  cfg = encoder.cfg
  curve_sum = np.zeros((cfg.num_layers, cfg.num_heads, n), np.float64)
  vk_sum = np.zeros((cfg.num_layers, cfg.num_heads), np.float64)
  vk_sq = np.zeros_like(vk_sum)
  token_types = np.zeros((batch_size, n), np.int32) if cfg.type_vocab_size else None
  with tqdm(total=num, desc=f"spectrum n={n}", unit="seq", disable=not progress) as bar:
    for start in range(0, num, batch_size):
      ids = sequences[start : start + batch_size]
      real = len(ids)
      if real < batch_size:  # one compiled shape; filler rows are dropped below
        ids = np.concatenate([ids, np.repeat(ids[-1:], batch_size - real, axis=0)])
      curves = np.asarray(
        _sequence_curves(encoder, jnp.asarray(ids), jnp.ones(ids.shape, bool), token_types),
        np.float64,
      )[:real]
      curve_sum += curves.sum(axis=0)
      vk = value_at(curves, k)
      vk_sum += vk.sum(axis=0)
      vk_sq += (vk**2).sum(axis=0)
      bar.update(real)
  mean_curve = curve_sum / num
  vk_mean = vk_sum / num
  vk_std = np.sqrt(np.maximum(vk_sq / num - vk_mean**2, 0.0))
  layer_curve = mean_curve.mean(axis=1)
  return {
    "num_sequences": int(num),
    "n": int(n),
    "k": int(k),
    "value_at_k": vk_mean,  # (layers, heads), mean over the sample of c(k)
    "value_at_k_std": vk_std,  # (layers, heads), std over the sample
    "layer_mean_value_at_k": vk_mean.mean(axis=1),  # (layers,)
    "layer_curves": layer_curve,  # (layers, n), mean over heads and sequences
    "head_curves": mean_curve,  # (layers, heads, n)
    # Smallest i with c(i) >= 0.9 on the layer's mean curve: an 'effective rank'.
    "layer_rank_90": (layer_curve < 0.9).sum(axis=-1) + 1,
  }


def trend(layer_values: np.ndarray) -> dict:
  """Is c(k) larger (spectrum more skewed, lower rank) in higher layers?"""
  layers = len(layer_values)
  out = {"last_minus_first": float(layer_values[-1] - layer_values[0])}
  if layers >= 2 and np.ptp(layer_values) > 0:
    from scipy.stats import spearmanr

    rho = float(spearmanr(np.arange(layers), layer_values).statistic)
    out["spearman_layer_vs_value_at_k"] = rho
    out["higher_layers_more_skewed"] = bool(rho > 0)
  return out


def _rounded(a, digits=5):
  return np.round(np.asarray(a, np.float64), digits).tolist()


def to_json(result: dict, meta: dict) -> dict:
  return {
    **meta,
    "num_sequences": result["num_sequences"],
    "n": result["n"],
    "k": result["k"],
    "curve_definition": "curve[i-1] = (s_1+...+s_i)/(s_1+...+s_n), s descending; "
    "value_at_k = curve[k-1]; means over the sampled sequences",
    "layer_mean_value_at_k": _rounded(result["layer_mean_value_at_k"]),
    "value_at_k": _rounded(result["value_at_k"]),
    "value_at_k_std": _rounded(result["value_at_k_std"]),
    "layer_rank_90": np.asarray(result["layer_rank_90"]).tolist(),
    "trend": trend(result["layer_mean_value_at_k"]),
    "layer_curves": _rounded(result["layer_curves"]),
    "head_curves": _rounded(result["head_curves"], 4),
  }


def plot_curves(result: dict, path: str, title: str = "") -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  curves = result["layer_curves"]
  layers, n = curves.shape
  x = np.arange(1, n + 1)
  colors = plt.cm.viridis(np.linspace(0, 0.9, layers))
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for i in range(layers):
    ax.plot(x, curves[i], color=colors[i], label=f"layer {i + 1}")
  ax.axvline(result["k"], color="gray", linestyle=":", linewidth=1)
  ax.set_xlabel("singular value index")
  ax.set_ylabel("normalized cumulative singular value")
  ax.set_xlim(1, n)
  ax.set_ylim(top=1.0)
  ax.set_title(title or f"Context matrix spectrum (n={n}, mean over heads)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2 if layers > 6 else 1, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_heatmap(result: dict, path: str, title: str = "") -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  values = result["value_at_k"]
  layers, heads = values.shape
  fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * heads + 2), max(3.0, 0.4 * layers + 1.5)))
  im = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis")
  if layers * heads <= 400:
    for i in range(layers):
      for j in range(heads):
        ax.text(
          j,
          i,
          f"{values[i, j]:.2f}",
          ha="center",
          va="center",
          fontsize=6,
          color="white" if values[i, j] < values.mean() else "black",
        )
  ax.set_xticks(range(heads), [str(h + 1) for h in range(heads)])
  ax.set_yticks(range(layers), [str(i + 1) for i in range(layers)])
  ax.set_xlabel("head")
  ax.set_ylabel("layer")
  ax.set_title(title or f"normalized cumulative singular value at k={result['k']}")
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def table(result: dict) -> str:
  k = result["k"]
  rows = [
    f"| layer | mean c({k}) over heads | min head | max head | rank for 90% |",
    "|---|---|---|---|---|",
  ]
  for i, v in enumerate(result["layer_mean_value_at_k"]):
    heads = result["value_at_k"][i]
    rows.append(
      f"| {i + 1} | {v:.4f} | {heads.min():.4f} | {heads.max():.4f} | "
      f"{int(result['layer_rank_90'][i])} |"
    )
  return "\n".join(rows)


# Loading models.


def load_workdir(workdir: str, step: int | None = None) -> tuple[ModelConfig, Encoder, Tokenizer]:
  """The encoder and tokenizer of one of the project's runs (latest checkpoint unless `step`)."""
  _, trainer, state = restore_run(workdir, step)
  model = trainer.model(state)
  encoder = model.encoder if hasattr(model, "encoder") else model
  tokenizer = getattr(trainer.task, "tokenizer", None)
  if tokenizer is None:
    tokenizer = Tokenizer.load(os.path.join(workdir, "tokenizer"))
  return encoder.cfg, encoder, tokenizer


def _label(path: str) -> str:
  """A short name for plot titles: the directory, or its parent for a generic 'model' dir."""
  parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
  return parts[-2] if parts[-1] in ("model", "hf", "checkpoint") and len(parts) > 1 else parts[-1]


def run(
  *,
  out_dir: str,
  hf_dir: str | None = None,
  workdir: str | None = None,
  step: int | None = None,
  dataset: str = "pydocs",
  split: str = "validation",
  field: str = "text",
  data_dir: str | None = None,
  num_sequences: int = 64,
  n: int = 512,
  k: int = 128,
  batch_size: int = 4,
  seed: int = 0,
  progress: bool = True,
) -> dict:
  """Loads a model, samples sequences, writes the PNGs and JSON; returns the JSON dict."""
  if (hf_dir is None) == (workdir is None):
    raise ValueError(
      "Give exactly one of --hf_dir (a HuggingFace BERT/RoBERTa directory) or "
      "--workdir (a full-attention run of this project)."
    )
  if hf_dir is not None:
    cfg, encoder, tokenizer = load_pretrained(hf_dir)
    source = {"hf_dir": os.path.abspath(hf_dir)}
  else:
    cfg, encoder, tokenizer = load_workdir(workdir, step)
    source = {"workdir": os.path.abspath(workdir), "step": step}
  _check_full(encoder)
  if n > cfg.max_len:
    print(f"--n={n} exceeds the model's max_len={cfg.max_len}: using n={cfg.max_len}.")
    n = cfg.max_len
  if k > n:
    raise ValueError(f"--k={k} is larger than n={n}.")
  texts = load_text_source(dataset, split, field, data_dir)
  sequences = sample_sequences(texts, tokenizer, n, num_sequences, seed)
  if len(sequences) < num_sequences:
    print(
      f"{dataset}[{split}] holds only {len(sequences)} sequences of n={n} tokens "
      f"(asked for {num_sequences}): using {len(sequences)}."
    )
  result = analyze(encoder, sequences, k, batch_size=batch_size, progress=progress)
  meta = {
    "source": source,
    "dataset": dataset,
    "split": split,
    "field": field,
    "seed": seed,
    "model": cfg.to_dict(),
  }
  out = to_json(result, meta)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "spectrum.json"), "w") as f:
    json.dump(out, f)
  name = _label(hf_dir or workdir)
  plot_curves(
    result,
    os.path.join(out_dir, "spectrum_curves.png"),
    f"{name}: {dataset}[{split}], n={n}, {result['num_sequences']} seqs",
  )
  plot_heatmap(
    result, os.path.join(out_dir, "spectrum_heatmap.png"), f"{name}: c({k}) per layer and head"
  )
  print(table(result))
  t = out["trend"]
  if "spearman_layer_vs_value_at_k" in t:
    verdict = "yes" if t["higher_layers_more_skewed"] else "no"
    print(
      f"Higher layers more skewed (larger c({k}))? {verdict}: Spearman rho(layer, c({k})) = "
      f"{t['spearman_layer_vs_value_at_k']:.3f}, last - first = {t['last_minus_first']:+.4f}"
    )
  print(f"wrote {out_dir}/spectrum.json, spectrum_curves.png, spectrum_heatmap.png")
  return out


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI flags; defined only when run as a script, so importing this module (tests, other
  tools) cannot clash with flags of the same name elsewhere (--workdir, --split)."""
  flags.DEFINE_string(
    "hf_dir",
    None,
    "HuggingFace BERT/RoBERTa directory (config.json, model.safetensors, tokenizer.json).",
  )
  flags.DEFINE_string("workdir", None, "A full-attention run of this project.")
  flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: latest).")
  flags.DEFINE_string("out_dir", None, "Where to write spectrum.json and the PNGs.")
  flags.DEFINE_string("dataset", "pydocs", "TFDS text dataset.")
  flags.DEFINE_string("split", "validation", "Split (TFDS slicing works).")
  flags.DEFINE_string("field", "text", "Text feature.")
  flags.DEFINE_string("data_dir", None, "TFDS data dir.")
  flags.DEFINE_integer("num_sequences", 64, "Sequences in the sample.")
  flags.DEFINE_integer("n", 512, "Sequence length (capped at the model's max_len).")
  flags.DEFINE_integer("k", 128, "Index at which the curve is reported.")
  flags.DEFINE_integer("batch_size", 4, "Sequences per forward pass.")
  flags.DEFINE_integer("seed", 0, "Seed of the document order.")


def main(argv):
  del argv
  if not FLAGS.out_dir:
    raise app.UsageError("--out_dir is required.")
  inputs = {
    name: [path] for name, path in (("--hf_dir", FLAGS.hf_dir), ("--workdir", FLAGS.workdir))
  }
  check_output_absl("--out_dir", FLAGS.out_dir, {k: v for k, v in inputs.items() if v[0]})
  try:
    run(
      out_dir=FLAGS.out_dir,
      hf_dir=FLAGS.hf_dir,
      workdir=FLAGS.workdir,
      step=FLAGS.step,
      dataset=FLAGS.dataset,
      split=FLAGS.split,
      field=FLAGS.field,
      data_dir=FLAGS.data_dir,
      num_sequences=FLAGS.num_sequences,
      n=FLAGS.n,
      k=FLAGS.k,
      batch_size=FLAGS.batch_size,
      seed=FLAGS.seed,
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  define_flags()
  app.run(main)
