"""A RoBERTa-style encoder with Linformer or full attention, and its task heads.

Parameters are float32 and carry logical axis names (vocab, embed, mlp, heads, kv, seq_proj, ...)
that `linformer.training.partitioning` maps onto a device mesh; computation runs in
`cfg.dtype`. Dropout is explicit: callers pass `deterministic` and, when training, an
`nnx.Rngs` with a `dropout` stream, so a jitted step can derive its randomness from (seed, step).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from linformer import axes
from linformer.attention import (
  QKV_NAMES,
  SelfAttention,
  SeqProjection,
  make_projection,
  partitioned,
)
from linformer.config import ConfigError, ModelConfig

_init = nnx.initializers.normal(0.02)  # BERT/RoBERTa's initializer range.

# config.REMAT_POLICIES: what a rematerialized layer saves (None: nothing but its input).
_policies = jax.checkpoint_policies
REMAT_POLICIES = {
  "full": None,
  "save_dots": _policies.dots_saveable,
  "save_dots_no_batch": _policies.dots_with_no_batch_dims_saveable,
  "save_qkv_proj": _policies.save_only_these_names(*QKV_NAMES),
}


def _padded_rows(init, rows: int):
  """`init` for the first `rows` rows (drawn exactly as an unpadded table's), zeros below:
  the vocabulary padding of `ModelConfig.vocab_multiple`."""

  def padded(key, shape, dtype=jnp.float32):
    real = init(key, (rows, *shape[1:]), dtype)
    return jnp.pad(real, [(0, shape[0] - rows)] + [(0, 0)] * (len(shape) - 1))

  return padded


def _dense(cfg, din, dout, names, rngs):
  return nnx.Linear(
    din,
    dout,
    dtype=jnp.dtype(cfg.dtype),
    rngs=rngs,
    kernel_init=partitioned(_init, *names),
    bias_init=partitioned(nnx.initializers.zeros_init(), names[-1]),
  )


def _layer_norm(cfg, rngs):
  return nnx.LayerNorm(
    cfg.hidden_size,
    epsilon=cfg.layer_norm_eps,
    dtype=jnp.dtype(cfg.dtype),
    rngs=rngs,
    scale_init=partitioned(nnx.initializers.ones_init(), axes.EMBED),
    bias_init=partitioned(nnx.initializers.zeros_init(), axes.EMBED),
  )


def gelu(x, approximate: bool = False):
  """BERT's GELU. Exact: x/2 (1 + erf(x/sqrt 2)), as torch and HF write it; on XLA:CPU erf is a
  rational polynomial, where jax.nn.gelu's erfc adds an exp and selects per element (5 against
  24 ms forward on 8M float32 values here). Within 1e-6 of jax.nn.gelu everywhere."""
  if approximate:
    return jax.nn.gelu(x, approximate=True)
  return 0.5 * x * (1.0 + jax.lax.erf(x / math.sqrt(2)))


def _scoped(name: str, fn):
  """`fn` under a `jax.named_scope`: the compiled step's operations carry the name (forward
  and backward), which is how benchmarks/profile_step.py attributes time to parts of a layer."""

  def call(*args):
    with jax.named_scope(name):
      return fn(*args)

  return call


class Embeddings(nnx.Module):
  """Token + learned absolute position (+ optional token type) embeddings, LayerNorm, dropout."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = jnp.dtype(cfg.dtype)
    self.token = nnx.Embed(
      cfg.padded_vocab_size,
      cfg.hidden_size,
      dtype=dtype,
      rngs=rngs,
      embedding_init=partitioned(_padded_rows(_init, cfg.vocab_size), axes.VOCAB, axes.EMBED),
    )
    self.position = nnx.Embed(
      cfg.max_len,
      cfg.hidden_size,
      dtype=dtype,
      rngs=rngs,
      embedding_init=partitioned(_init, None, axes.EMBED),
    )
    if cfg.type_vocab_size:
      self.token_type = nnx.Embed(
        cfg.type_vocab_size,
        cfg.hidden_size,
        dtype=dtype,
        rngs=rngs,
        embedding_init=partitioned(_init, None, axes.EMBED),
      )
    self.norm = _layer_norm(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.dropout_rate)

  def __call__(self, input_ids, token_type_ids=None, *, deterministic=True, rngs=None):
    n = input_ids.shape[1]
    if n > self.cfg.max_len:
      raise ValueError(
        f"Input length {n} exceeds the model's maximum length config.model.max_len="
        f"{self.cfg.max_len}. Truncate inputs (e.g. config.max_seq_len) or build the model "
        "with a larger max_len."
      )
    return self._embed(input_ids, jnp.arange(n)[None], token_type_ids, deterministic, rngs)

  @jax.named_scope("embeddings")
  def _embed(self, input_ids, positions, token_type_ids, deterministic, rngs):
    x = self.token(input_ids) + self.position(positions)
    if self.cfg.type_vocab_size:
      if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
      x = x + self.token_type(token_type_ids)
    return self.dropout(self.norm(x), deterministic=deterministic, rngs=rngs)

  def step(self, token_ids, position):
    """(b, 1, hidden) embeddings of tokens (b,) all at `position` (decoding)."""
    return self._embed(token_ids[:, None], jnp.reshape(position, (1, 1)), None, True, None)


class EncoderLayer(nnx.Module):
  """Attention and GELU MLP, each with residual, dropout and LayerNorm (post-LN or pre-LN)."""

  def __init__(self, cfg: ModelConfig, layer: int, shared: SeqProjection | None, *, rngs: nnx.Rngs):
    self.pre_ln = cfg.pre_ln
    self.cfg = cfg
    self.attention = SelfAttention(cfg, layer, shared, rngs=rngs)
    self.attention_norm = _layer_norm(cfg, rngs)
    self.mlp_in = _dense(cfg, cfg.hidden_size, cfg.mlp_dim, (axes.EMBED, axes.MLP), rngs)
    self.mlp_out = _dense(cfg, cfg.mlp_dim, cfg.hidden_size, (axes.MLP, axes.EMBED), rngs)
    self.mlp_norm = _layer_norm(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.dropout_rate)
    self.activation_dropout = nnx.Dropout(cfg.activation_dropout_rate)

  def __call__(self, x, mask, *, deterministic=True, rngs=None):
    attn = lambda y: self.attention(y, mask, deterministic=deterministic, rngs=rngs)
    return self._residual(x, attn, deterministic, rngs)

  def step(self, x, cache, position):
    """One token's layer output (decoding; see SelfAttention.step) and the updated cache."""
    updated = {}

    def attn(y):
      out, updated["cache"] = self.attention.step(y, cache, position)
      return out

    return self._residual(x, attn, True, None), updated["cache"]

  def _residual(self, x, attn, deterministic, rngs):
    drop = _scoped("dropout", lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs))
    act_drop = _scoped(
      "dropout", lambda y: self.activation_dropout(y, deterministic=deterministic, rngs=rngs)
    )
    attn = _scoped("attention", attn)
    act = lambda y: gelu(y, self.cfg.gelu_approximate)
    mlp = _scoped("mlp", lambda y: self.mlp_out(act_drop(act(self.mlp_in(y)))))
    attention_norm = _scoped("layer_norm", self.attention_norm)
    mlp_norm = _scoped("layer_norm", self.mlp_norm)
    if self.pre_ln:
      x = x + drop(attn(attention_norm(x)))
      return x + drop(mlp(mlp_norm(x)))
    x = attention_norm(x + drop(attn(x)))
    return mlp_norm(x + drop(mlp(x)))


def _stacked_layers(cfg: ModelConfig, rngs: nnx.Rngs) -> EncoderLayer:
  """One EncoderLayer whose parameters have a leading axis of num_layers (logical name
  `layers`, never sharded), each layer initialised from its own split of `rngs`."""

  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
  def make(rngs):
    return EncoderLayer(cfg, 0, None, rngs=rngs)

  return make(rngs)


class Encoder(nnx.Module):
  """Embeddings and a stack of layers; returns hidden states (batch, n, hidden).

  The layers are a list of modules, or with `cfg.scanned` one module of stacked parameters run
  under `lax.scan` (`layer_list` gives per-layer views of it to the per-layer paths)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, rngs=rngs)
    if cfg.scanned:
      self.layers = _stacked_layers(cfg, rngs)
    else:
      shared = None
      if cfg.attention == "linformer" and cfg.sharing == "layerwise":
        # One matrix for every layer, head, key and value; each layer refers to this module.
        shared = make_projection(cfg, cfg.layer_ks[0], None, rngs)
      self.layers = nnx.List(
        [EncoderLayer(cfg, i, shared, rngs=rngs) for i in range(cfg.num_layers)]
      )
    if cfg.pre_ln:
      self.final_norm = _layer_norm(cfg, rngs)

  def __call__(
    self,
    input_ids,
    attention_mask,
    token_type_ids=None,
    *,
    deterministic=True,
    rngs=None,
    all_layers=False,
  ):
    """The last hidden states; with `all_layers`, a list of every layer's output too."""
    x = self.embeddings(input_ids, token_type_ids, deterministic=deterministic, rngs=rngs)
    x = axes.constrain_batch(x)
    run = self._scanned if self.cfg.scanned else self._unrolled
    x, outputs = run(x, attention_mask, deterministic, rngs, all_layers)
    if self.cfg.pre_ln:
      x = self.final_norm(x)
    return (x, outputs) if all_layers else x

  def _unrolled(self, x, mask, deterministic, rngs, all_layers):
    del all_layers  # every layer's output is at hand
    outputs = []
    for layer in self.layers:
      if self.cfg.remat:
        x = nnx.remat(
          lambda lyr, x, m, r: lyr(x, m, deterministic=deterministic, rngs=r),
          policy=REMAT_POLICIES[self.cfg.remat_policy],
        )(layer, x, mask, rngs)
      else:
        x = layer(x, mask, deterministic=deterministic, rngs=rngs)
      x = axes.constrain_batch(x)
      outputs.append(x)
    return x, outputs

  def _scanned(self, x, mask, deterministic, rngs, all_layers):
    """The stacked layers as one `lax.scan`. The dropout stream's state is part of the carry, so
    layer i draws the keys it draws unrolled: the outputs equal the unrolled model's on the same
    parameters, with dropout on too."""
    graphdef, stacked = nnx.split(self.layers)
    rng_def, rng_state = nnx.split(rngs) if rngs is not None else (None, None)

    def body(carry, layer_state):
      x, rng_state = carry
      r = None if rngs is None else nnx.merge(rng_def, rng_state)
      x = nnx.merge(graphdef, layer_state)(x, mask, deterministic=deterministic, rngs=r)
      x = axes.constrain_batch(x)
      return (x, None if r is None else nnx.state(r)), (x if all_layers else None)

    if self.cfg.remat:
      policy = REMAT_POLICIES[self.cfg.remat_policy]
      body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    (x, rng_state), ys = jax.lax.scan(body, (x, rng_state), stacked)
    if rngs is not None:
      nnx.update(rngs, rng_state)
    return x, [ys[i] for i in range(self.cfg.num_layers)] if all_layers else []

  def layer_list(self) -> list[EncoderLayer]:
    """The layers one by one: views of the stacked parameters when scanned (their gradients
    reach the stack), for the paths that treat layers one at a time."""
    if not self.cfg.scanned:
      return list(self.layers)
    graphdef, stacked = nnx.split(self.layers)
    return [
      nnx.merge(graphdef, jax.tree.map(lambda v, i=i: v[i], stacked))
      for i in range(self.cfg.num_layers)
    ]

  def attention_inputs_and_outputs(self, input_ids, attention_mask, token_type_ids=None):
    """Each layer's input and its attention's output (before dropout and residual), without
    dropout: what attention transfer (configs/uptrain.py) fits a student's attention to."""
    x = self.embeddings(input_ids, token_type_ids)
    inputs, outputs = [], []
    for layer in self.layer_list():
      inputs.append(x)
      out = layer.attention(layer.attention_norm(x) if layer.pre_ln else x, attention_mask)
      outputs.append(out)
      x = layer._residual(x, lambda _, out=out: out, True, None)  # attention computed once
    return inputs, outputs

  def attention_outputs(self, inputs, attention_mask):
    """Each layer's attention output on the given inputs (one per layer, e.g. a teacher's)."""
    return [
      layer.attention(layer.attention_norm(x) if layer.pre_ln else x, attention_mask)
      for layer, x in zip(self.layer_list(), inputs)
    ]

  def init_cache(self, batch_size: int) -> list[dict[str, jax.Array]]:
    """Each layer's decoding cache (causal models; SelfAttention.init_cache)."""
    return [layer.attention.init_cache(batch_size) for layer in self.layer_list()]

  def step(self, token_ids, cache, position):
    """Hidden states (b, 1, hidden) of tokens (b,) at `position`, and the updated cache."""
    x = self.embeddings.step(token_ids, position)
    new_cache = []
    for layer, layer_cache in zip(self.layer_list(), cache):
      x, layer_cache = layer.step(x, layer_cache, position)
      new_cache.append(layer_cache)
    if self.cfg.pre_ln:
      x = self.final_norm(x)
    return x, new_cache


class MaskedLM(nnx.Module):
  """Encoder + RoBERTa's MLM head (dense, GELU, LayerNorm, decoder tied to token embeddings).

  Logits are computed only at `mlm_positions` (batch, m): with 15% masking that is ~7x less work
  and memory in the vocabulary projection than scoring every position.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    self.mlm_dense = _dense(
      cfg, cfg.hidden_size, cfg.hidden_size, (axes.EMBED, axes.EMBED_OUT), rngs
    )
    self.mlm_norm = _layer_norm(cfg, rngs)
    self.mlm_bias = nnx.Param(
      jnp.zeros((cfg.padded_vocab_size,), jnp.float32),
      out_sharding=(axes.VOCAB,),
      eager_sharding=False,
    )

  def __call__(
    self,
    input_ids,
    attention_mask,
    mlm_positions,
    token_type_ids=None,
    *,
    deterministic=True,
    rngs=None,
  ):
    h = self.encoder(
      input_ids, attention_mask, token_type_ids, deterministic=deterministic, rngs=rngs
    )
    return self.logits(jnp.take_along_axis(h, mlm_positions[:, :, None], axis=1))

  def logits_and_hidden(
    self, input_ids, attention_mask, mlm_positions, *, deterministic=True, rngs=None
  ):
    """The logits at `mlm_positions` and every layer's hidden states (distillation)."""
    h, layers = self.encoder(
      input_ids, attention_mask, deterministic=deterministic, rngs=rngs, all_layers=True
    )
    return self.logits(jnp.take_along_axis(h, mlm_positions[:, :, None], axis=1)), layers

  def logits(self, h):
    """Vocabulary logits of hidden states h (..., hidden), accumulated and returned in float32
    whatever the compute dtype: a bf16 softmax over tens of thousands of classes loses the
    small probabilities the loss needs (MaxText keeps this matmul in float32 too).

    Only the `vocab_size` real ids are scored: the table's padding rows (vocab_multiple) are
    sliced off, so no loss, fill-mask or generation can pick a padded id."""
    with jax.named_scope("mlm_head"):
      return self._logits(h)

  def _logits(self, h):
    h = self.mlm_norm(gelu(self.mlm_dense(h), self.cfg.gelu_approximate))
    dtype = jnp.dtype(self.cfg.dtype)
    table = self.encoder.embeddings.token.embedding[...].astype(dtype)
    logits = jnp.dot(h.astype(dtype), table.T, preferred_element_type=jnp.float32)
    return (logits + self.mlm_bias[...])[..., : self.cfg.vocab_size]


class CausalLM(MaskedLM):
  """A decoder: the causal encoder (`config.model.causal`) and the same tied LM head, scoring
  the next token at every position. Its parameters have MaskedLM's names, so an MLM run or a
  BERT checkpoint can start it (`config.init_from`).

  `init_cache` and `step` decode incrementally; `step` gives the forward pass's logits at that
  position (tests/test_causal.py).
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if not cfg.causal:
      raise ConfigError(
        "config.model.causal=False: a causal LM needs causal attention. Fix: set "
        "config.model.causal=True (configs/clm.py does)."
      )
    super().__init__(cfg, rngs=rngs)

  def __call__(
    self, input_ids, attention_mask, token_type_ids=None, *, deterministic=True, rngs=None
  ):
    """Logits (b, n, vocab): position i scores token i + 1."""
    h = self.encoder(
      input_ids, attention_mask, token_type_ids, deterministic=deterministic, rngs=rngs
    )
    return self.logits(h)

  def init_cache(self, batch_size: int):
    return self.encoder.init_cache(batch_size)

  def step(self, token_ids, cache, position):
    """Logits (b, vocab) after tokens (b,) at `position`, and the updated cache."""
    h, cache = self.encoder.step(token_ids, cache, position)
    return self.logits(h[:, 0]), cache


class SequenceClassifier(nnx.Module):
  """Encoder + RoBERTa's classification head on the first token; num_labels=1 is regression."""

  def __init__(self, cfg: ModelConfig, num_labels: int, *, rngs: nnx.Rngs):
    if num_labels < 1:
      raise ConfigError(f"num_labels={num_labels}: must be >= 1 (1 for regression).")
    self.cfg = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    self.cls_dense = _dense(
      cfg, cfg.hidden_size, cfg.hidden_size, (axes.EMBED, axes.EMBED_OUT), rngs
    )
    self.cls_out = _dense(cfg, cfg.hidden_size, num_labels, (axes.EMBED, None), rngs)
    self.dropout = nnx.Dropout(cfg.dropout_rate)

  def __call__(
    self, input_ids, attention_mask, token_type_ids=None, *, deterministic=True, rngs=None
  ):
    h = self.encoder(
      input_ids, attention_mask, token_type_ids, deterministic=deterministic, rngs=rngs
    )
    drop = lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs)
    h = jnp.tanh(self.cls_dense(drop(h[:, 0])))
    return self.cls_out(drop(h)).astype(jnp.float32)
