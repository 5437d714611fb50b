"""LSH attention (Reformer): exact padding, the attention it computes against brute force, how
its rounds approach full attention, where its randomness comes from, gradients, the layer scan,
config errors and a training run."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import finetune, pretrain
from linformer.attention import SelfAttention
from linformer.config import ConfigError, ModelConfig
from linformer.convert import export, hf_import
from linformer.convert.hf_import import load_into
from linformer.lsh import LSH_SELF_SCORE, lsh_attend, lsh_hash, lsh_rotations
from linformer.model import Encoder, MaskedLM
from linformer.training import validation, warm_start
from linformer.training.loop import train_and_evaluate
from linformer.training.run_logs import read_metrics
from tests.helpers import small_config

SMALL = dict(
  vocab_size=97,
  max_len=64,
  num_layers=2,
  hidden_size=32,
  num_heads=4,
  mlp_dim=64,
  attention="lsh",
  lsh_chunk_len=8,
  lsh_rounds=2,
  dropout_rate=0.0,
  attention_dropout_rate=0.0,
)


def _padded(ids, n_total, rng):
  """ids padded with random (non-zero) token ids, so any leak of padding would show."""
  b, n = ids.shape
  pad = rng.integers(1, SMALL["vocab_size"], size=(b, n_total - n))
  mask = np.arange(n_total)[None] < n
  return np.concatenate([ids, pad], 1).astype(np.int32), np.repeat(mask, b, 0).astype(np.int32)


@pytest.mark.parametrize("length", [pytest.param(37, marks=pytest.mark.slow), 32])
def test_padding_is_exact(length):
  """Any padding, to a whole chunk or not (37 is not a multiple of lsh_chunk_len=8, 32 is): the
  padding sorts into an extra bucket after the real tokens, so they are sorted, chunked and
  attended as without it. Two layers, so the first layer's padded outputs are inputs too."""
  enc = Encoder(ModelConfig(**SMALL), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  ids = rng.integers(1, SMALL["vocab_size"], size=(2, length)).astype(np.int32)
  ref = enc(ids, np.ones_like(ids))
  for n_total in (length + 1, 40, 64):
    out = enc(*_padded(ids, n_total, rng))
    np.testing.assert_allclose(out[:, :length], ref, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_padding_exact_with_per_example_lengths():
  """Rows of one batch with different lengths each match their own unpadded run."""
  enc = Encoder(ModelConfig(**{**SMALL, "lsh_rounds": 3}), rngs=nnx.Rngs(1))
  rng = np.random.default_rng(1)
  lengths = [5, 16, 33, 64]
  batch = rng.integers(1, SMALL["vocab_size"], size=(4, 64)).astype(np.int32)
  mask = (np.arange(64)[None] < np.array(lengths)[:, None]).astype(np.int32)
  out = enc(batch, mask)
  for i, n in enumerate(lengths):
    ref = enc(batch[i : i + 1, :n], np.ones((1, n), np.int32))
    np.testing.assert_allclose(out[i, :n], ref[0], atol=1e-5, rtol=0)


def _qkv(b=2, n=16, h=2, d=8, seed=0):
  kq, kv = jax.random.split(jax.random.key(seed))
  return 2.0 * jax.random.normal(kq, (b, n, h, d)), jax.random.normal(kv, (b, n, h, d))


def _unit(q):
  return q / jnp.linalg.norm(q, axis=-1, keepdims=True)


@pytest.mark.slow
def test_one_bucket_and_one_chunk_is_shared_qk_full_attention():
  """Every token in one bucket and one chunk covering the sequence: LSH attention is full
  attention with keys = unit queries, itself masked, padding masked; any number of identical
  rounds is the same (the log-sum-exp weights are equal)."""
  q, v = _qkv()
  b, n, h, d = q.shape
  mask = jnp.ones((b, n), bool).at[1, 11:].set(False)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, _unit(q)) / np.sqrt(d)
  logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  logits = jnp.where(jnp.eye(n, dtype=bool), LSH_SELF_SCORE, logits)
  expected = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)
  for rounds in (1, 3):
    buckets = jnp.zeros((b, h, rounds, n), jnp.int32)
    out = lsh_attend(q, v, mask, buckets, n, nnx.Dropout(0.0), True, None)
    np.testing.assert_allclose(out[0], expected[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(out[1, :11], expected[1, :11], atol=1e-6, rtol=0)


def _brute_force(q, v, mask, buckets, chunk_len):
  """Reformer's multi-round attention by its definition, in float64 loops: in round r a query
  sees the real keys j != i of its bucket whose place in the round's (bucket, position) order
  is in its chunk or the chunk before; the output is the softmax over all rounds' keys together
  (a key seen in m rounds counted m times), with the query's own key at LSH_SELF_SCORE."""
  q, v, mask, buckets = (np.asarray(a, np.float64) for a in (q, v, mask, buckets))
  b, n, h, d = q.shape
  k = q / np.linalg.norm(q, axis=-1, keepdims=True)
  out = np.zeros_like(v)
  for bi, hi in itertools.product(range(b), range(h)):
    rounds = buckets[bi, hi]
    for i in range(n):
      scores, values = [], []
      for r in range(rounds.shape[0]):
        key = np.where(mask[bi] > 0, rounds[r], np.inf)  # padding sorts last
        place = np.empty(n, int)
        place[np.lexsort((np.arange(n), key))] = np.arange(n)
        for j in range(n):
          near = 0 <= place[i] // chunk_len - place[j] // chunk_len <= 1
          if j == i:
            scores.append(LSH_SELF_SCORE)
          elif near and mask[bi, j] and rounds[r, j] == rounds[r, i]:
            scores.append(q[bi, i, hi] @ k[bi, j, hi] / np.sqrt(d))
          else:
            continue
          values.append(v[bi, j, hi])
      w = np.exp(np.array(scores) - max(scores))
      out[bi, i, hi] = w @ np.array(values) / w.sum()
  return out


@pytest.mark.parametrize("chunk_len, num_buckets", [(4, 3), (16, 6)])
def test_rounds_combine_as_one_softmax_over_their_keys(chunk_len, num_buckets):
  """Random buckets in 3 rounds over 16 tokens, padding (with buckets of its own: it must sort
  last all the same), chunks of 4 or one chunk (whose chunk before is itself, to be masked),
  some tokens alone in their bucket: `lsh_attend` against the brute-force definition (a wrong
  sort, chunk window, mask or round weighting moves outputs by O(1); float32 against float64
  agrees to 1e-5)."""
  q, v = _qkv(seed=1)
  b, n, h, _ = q.shape
  mask = jnp.ones((b, n), bool).at[1, 13:].set(False)
  buckets = jax.random.randint(jax.random.key(2), (b, h, 3, n), 0, num_buckets)
  out = lsh_attend(q, v, mask, buckets, chunk_len, nnx.Dropout(0.0), True, None)
  expected = _brute_force(q, v, mask, buckets, chunk_len)
  np.testing.assert_allclose(out[0], expected[0], atol=1e-5, rtol=0)
  np.testing.assert_allclose(out[1, :13], expected[1, :13], atol=1e-5, rtol=0)


def test_hash_is_angular():
  """argmax([xR; -xR]): scaling a vector keeps its bucket, negating it moves it by B/2."""
  q, _ = _qkv()
  rotations = jax.random.normal(jax.random.key(3), (2, q.shape[-1], 4))
  buckets = lsh_hash(q, rotations)
  assert buckets.shape == (2, 2, 2, 16) and buckets.dtype == jnp.int32
  assert int(buckets.min()) >= 0 and int(buckets.max()) < 8 and len(np.unique(buckets)) == 8
  np.testing.assert_array_equal(lsh_hash(3.0 * q, rotations), buckets)
  np.testing.assert_array_equal(lsh_hash(-q, rotations), (buckets + 4) % 8)


def _shared_qk_full_attention(att, x):
  """The module's own projections as full attention: keys = unit queries, itself masked."""
  q, v = att.query(x), att.value(x)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, _unit(q)) / np.sqrt(q.shape[-1])
  logits = jnp.where(jnp.eye(x.shape[1], dtype=bool), LSH_SELF_SCORE, logits)
  return att.out(jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v))


@pytest.mark.slow
def test_more_rounds_come_closer_to_shared_qk_full_attention():
  """n = 64 in chunks of 16, 4 buckets: each round reaches a quarter to a half of the keys, and
  more rounds reach more of the high-scoring ones. The relative error to the module's shared-QK
  full attention, averaged over 3 seeds (inputs, weights and rotations), falls by at least 10%
  at each doubling of the rounds 1 -> 2 -> 4 -> 8 (measured: by 25-35%, each seed monotone)."""
  base = dict(SMALL, num_layers=1, hidden_size=64, lsh_chunk_len=16, lsh_buckets=4)
  errors = {rounds: [] for rounds in (1, 2, 4, 8)}
  for seed in range(3):
    x = 4.0 * jax.random.normal(jax.random.key(100 + seed), (2, 64, 64))
    mask = jnp.ones((2, 64), bool)
    for rounds in errors:
      cfg = ModelConfig(**{**base, "lsh_rounds": rounds, "lsh_seed": seed})
      att = SelfAttention(cfg, 0, None, rngs=nnx.Rngs(seed))
      ref = _shared_qk_full_attention(att, x)
      errors[rounds].append(float(jnp.linalg.norm(att(x, mask) - ref) / jnp.linalg.norm(ref)))
  means = [np.mean(e) for e in errors.values()]
  assert all(later < 0.9 * earlier for earlier, later in zip(means, means[1:])), errors


def test_evaluation_hash_is_fixed_and_training_hash_is_drawn():
  cfg = ModelConfig(**SMALL)
  att = SelfAttention(cfg, 0, None, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 64, SMALL["hidden_size"]))
  mask = jnp.ones((2, 64), bool)
  evaluated = att(x, mask)
  np.testing.assert_array_equal(att(x, mask), evaluated)  # bit-identical
  # Evaluation ignores the streams it is given: its rotations come from lsh_seed alone.
  np.testing.assert_array_equal(att(x, mask, rngs=nnx.Rngs(dropout=7)), evaluated)
  other_seed = SelfAttention(dataclasses.replace(cfg, lsh_seed=1), 0, None, rngs=nnx.Rngs(0))
  assert float(jnp.abs(other_seed(x, mask) - evaluated).max()) > 1e-3

  train = lambda seed: att(x, mask, deterministic=False, rngs=nnx.Rngs(dropout=seed))
  np.testing.assert_array_equal(train(3), train(3))  # the same key, the same rotations
  assert float(jnp.abs(train(3) - train(4)).max()) > 1e-3
  rngs = nnx.Rngs(dropout=3)
  first, second = lsh_rotations(cfg, False, rngs), lsh_rotations(cfg, False, rngs)
  assert first.shape == (2, cfg.head_dim, cfg.lsh_num_buckets // 2)
  assert not np.array_equal(first, second)  # new rotations at every call
  with pytest.raises(ValueError, match="dropout stream"):
    att(x, mask, deterministic=False)


@pytest.mark.slow
def test_gradients_reach_the_shared_projection():
  """Queries and keys both come from `query`, which gets finite, nonzero gradients (through the
  scores and the rounds' weights; the hash passes none); there is no key projection."""
  cfg = ModelConfig(**{**SMALL, "dropout_rate": 0.1, "attention_dropout_rate": 0.1})
  enc = Encoder(cfg, rngs=nnx.Rngs(0))
  ids = jnp.arange(2 * 50).reshape(2, 50) % cfg.vocab_size
  mask = jnp.arange(50)[None] < jnp.array([[50], [30]])

  def loss(model):
    out = model(ids, mask, deterministic=False, rngs=nnx.Rngs(dropout=0))
    return jnp.mean(out**2)

  grads = nnx.grad(loss)(enc)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  for layer in grads["layers"].values():
    attention = layer["attention"]
    assert "key" not in attention
    for name in ("query", "value", "out"):
      assert float(jnp.abs(attention[name]["kernel"][...]).max()) > 0, name


@pytest.mark.slow
def test_scanned_layers_compute_the_unrolled_model():
  """Scanned and unrolled, the same outputs with and without dropout: in training every layer
  draws its rotations (and dropout masks) from the stream in the scan's carry, as unrolled."""
  tiny = dict(SMALL, max_len=16, num_layers=3, lsh_chunk_len=4, attention_dropout_rate=0.1)
  unrolled = MaskedLM(ModelConfig(**tiny, scan_layers=False), rngs=nnx.Rngs(0))
  params = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(unrolled))}
  scanned = load_into(MaskedLM(ModelConfig(**tiny, scan_layers=True), rngs=nnx.Rngs(1)), params)
  ids = jax.random.randint(jax.random.key(1), (2, 16), 5, 97)
  mask = jnp.ones((2, 16), bool).at[1, 11:].set(False)
  positions = jnp.tile(jnp.arange(0, 16, 4)[None], (2, 1))
  for deterministic in (True, False):
    a, b = (
      m(ids, mask, positions, deterministic=deterministic, rngs=nnx.Rngs(dropout=3))
      for m in (unrolled, scanned)
    )
    np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)


BAD = [
  (dict(lsh_buckets=3), "config.model.lsh_buckets=3: .*even number"),
  (dict(lsh_buckets=0), "config.model.lsh_buckets=0: .*even number"),
  (dict(lsh_chunk_len=24), "config.model.lsh_chunk_len=24: .*divisor of max_len"),
  (dict(lsh_chunk_len=0), "config.model.lsh_chunk_len=0: "),
  (dict(lsh_rounds=0), "config.model.lsh_rounds=0: must be an integer >= 1"),
  (dict(lsh_seed=-1), "config.model.lsh_seed=-1: "),
  (dict(causal=True), "config.model.causal=True: LSH attention is built bidirectional"),
  (dict(attention_impl="xla"), "config.model.attention_impl='xla': LSH attention runs"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_configuration_is_a_one_line_error(overrides, message):
  with pytest.raises(ConfigError, match=message) as info:
    ModelConfig(**{**SMALL, **overrides})
  assert "Fix:" in str(info.value) and "\n" not in str(info.value)


def test_defaults_and_other_kinds_ignore_the_lsh_fields():
  cfg = ModelConfig(**{**SMALL, "lsh_chunk_len": 16, "lsh_buckets": None})
  assert cfg.lsh_num_buckets == 2 * 64 // 16  # the paper's: a bucket averages half a chunk
  assert ModelConfig(**{**SMALL, "attention": "full", "lsh_chunk_len": 24}).attention == "full"
  assert ModelConfig().lsh_rounds == 4 and ModelConfig().lsh_chunk_len == 64


def test_configs_take_attention_lsh():
  """The tiny pretraining config and the ListOps fine-tuning config build an LSH model."""
  tiny = validation.check_model(pretrain.get_config("size=tiny,attention=lsh"))
  assert tiny.attention == "lsh" and tiny.lsh_num_buckets == 4  # n = 128, chunks of 64
  listops = finetune.get_config("dataset=listops,size=tiny,n=512,attention=lsh")
  assert validation.check_model(listops).lsh_num_buckets == 16


def test_huggingface_conversion_is_refused_in_one_line(data_dir, hf_dir):
  """BERT / RoBERTa have separate query and key weights: no export, import or warm start."""
  cfg = ModelConfig(**SMALL)
  params = {
    p: np.asarray(v.get_value())
    for p, v in nnx.to_flat_state(nnx.state(MaskedLM(cfg, rngs=nnx.Rngs(0))))
  }
  for convert in (
    lambda: export.export_params(params, cfg, "bert"),
    lambda: hf_import.params_from_tensors(cfg, {}, "bert"),
    lambda: warm_start.open_source(
      small_config(data_dir, **{"model.attention": "lsh", "init_from": hf_dir})
    ),
  ):
    with pytest.raises(ConfigError, match="attention='lsh'|an LSH model") as info:
      convert()
    assert "Fix:" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_pretraining_with_lsh_trains_and_evaluates(data_dir, pydocs_tokenizer, tmp_path):
  """configs/pretrain.py with attention=lsh through the training loop: 3 steps and the final
  evaluation, finite losses."""
  config = small_config(
    data_dir,
    **{
      "model.attention": "lsh",
      "model.lsh_chunk_len": 16,
      "data.tokenizer": pydocs_tokenizer,
      "num_train_steps": 3,
      "checkpoint_every_steps": 3,
    },
  )
  train_and_evaluate(config, str(tmp_path))
  train = read_metrics(str(tmp_path), "train")
  assert [r["step"] for r in train] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in train)
  ev = read_metrics(str(tmp_path), "eval")[-1]
  assert ev["step"] == 3 and np.isfinite(ev["perplexity"])
