"""Length buckets (config.data.length_buckets): a classification batch cut to the smallest bucket
holding its longest example computes what the batch padded to n computes, for every attention
kind, so buckets change the work and never the results."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from linformer.config import ConfigError, ModelConfig
from linformer.data import encoding
from linformer.model import SequenceClassifier

N = 64


def test_bucket_settings():
  assert encoding.length_buckets("auto", 512) == (16, 32, 64, 128, 256, 512)
  assert encoding.length_buckets("auto", 100) == (16, 32, 64, 100)
  assert encoding.length_buckets("none", 512) == (512,)
  assert encoding.length_buckets("64,128", 512) == (64, 128, 512)  # n is always a bucket
  assert encoding.length_buckets((40, 100), 512, multiple=64) == (64, 128, 512)  # LSH chunks
  assert encoding.length_buckets("auto", 512, multiple=64) == (64, 128, 256, 512)
  for bad in ("often", "0,64", "64,1024", ""):
    with pytest.raises(ConfigError, match="config.data.length_buckets"):
      encoding.length_buckets(bad, 512)


def test_cut_to_the_smallest_bucket_of_the_longest_row():
  mask = np.zeros((3, N), np.int32)
  for row, length in enumerate((5, 20, 17)):
    mask[row, :length] = 1
  batch = {"input_ids": mask * 7, "attention_mask": mask, "labels": np.arange(3)}
  width = encoding.bucket_width(mask, encoding.length_buckets("auto", N))
  cut = encoding.cut_to(batch, width)
  assert width == 32 and cut["input_ids"].shape == (3, 32) and cut["labels"].shape == (3,)
  assert (cut["attention_mask"].sum(1) == mask.sum(1)).all()  # no real token dropped


KINDS = [
  dict(attention="full"),
  *(dict(sharing=s) for s in ("none", "headwise", "kv", "layerwise")),
  *(dict(projection=p) for p in ("random", "mean_pool", "max_pool", "conv")),
  dict(attention="lsh", lsh_chunk_len=16),
]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_bucketed_logits_equal_the_padded_ones(kind):
  """Logits of a batch cut to its bucket = those of the same batch padded to n, to 1e-5 (float32
  sums in another order); LSH to 1e-5 as well (its evaluation hash is fixed)."""
  cfg = ModelConfig(
    vocab_size=50, max_len=N, num_layers=2, hidden_size=32, num_heads=2, mlp_dim=64, k=16,
    dtype="float32", **kind,
  )  # fmt: skip
  model = SequenceClassifier(cfg, num_labels=3, rngs=nnx.Rngs(0))
  lengths = np.array([5, 30, 17, 1])
  mask = (np.arange(N)[None] < lengths[:, None]).astype(np.int32)
  ids = np.random.default_rng(0).integers(5, 50, (4, N)) * mask
  batch = {"input_ids": ids, "attention_mask": mask}
  buckets = encoding.length_buckets("auto", N, 16 if kind.get("attention") == "lsh" else 1)
  cut = encoding.cut_to(batch, encoding.bucket_width(mask, buckets))
  assert cut["input_ids"].shape[1] == 32
  padded = model(jnp.asarray(ids), jnp.asarray(mask))
  bucketed = model(jnp.asarray(cut["input_ids"]), jnp.asarray(cut["attention_mask"]))
  np.testing.assert_allclose(np.asarray(bucketed), np.asarray(padded), atol=1e-5, rtol=1e-5)
