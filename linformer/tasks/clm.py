"""Causal-LM pretraining: the MLM task's packed blocks read unmasked, the next token predicted at
every position by a causal encoder (`config.model.causal`: full attention with a causal mask, or
the segment-wise causal Linformer), and text generation with the model's decoding cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from linformer import flops
from linformer import model as model_lib
from linformer.tasks.mlm import MaskedLMTask, mlm_sums

LOSS_CHUNK = 512  # positions whose vocabulary logits the loss makes at a time


def chunked_lm_sums(logits_of, h, targets, weights, chunk: int | None = None):
  """`mlm_sums` of the logits of hidden states h (b, n, hidden) at every position, made `chunk`
  positions at a time and recomputed in the backward pass, so the (b, n, vocab) float32 logits
  never exist whole: at n = 2048 and a 50k vocabulary they are 400 MB per sequence, and their
  gradient as much again. Padding the last chunk adds zero-weight positions only."""
  b, n, _ = h.shape
  chunk = min(n, chunk or LOSS_CHUNK)
  pad = -n % chunk
  split = lambda x: jnp.moveaxis(
    jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)).reshape(b, -1, chunk, *x.shape[2:]),
    1,
    0,
  )
  one = jax.checkpoint(lambda args: mlm_sums(logits_of(args[0]), args[1], args[2]))
  sums = jax.lax.map(one, (split(h), split(targets), split(weights.astype(jnp.float32))))
  return jax.tree.map(lambda x: x.sum(0), sums)


class CausalLMTask(MaskedLMTask):
  """`MaskedLMTask`'s tokenizer, corpus, warm starts and metrics (perplexity beside the unigram
  perplexity of the same tokens) with next-token examples (`linformer.data.clm`)."""

  name = "clm"
  objective = "clm"

  def make_model(self, cfg, rngs):
    return model_lib.CausalLM(cfg, rngs=rngs)

  def train_flops_per_sequence(self, cfg, n=None):
    return sum(flops.train_flops(cfg, n or cfg.max_len, "clm").values())

  def loss(self, model, batch, *, deterministic, rngs):
    h = model.encoder(
      batch["input_ids"], batch["attention_mask"], deterministic=deterministic, rngs=rngs
    )
    return chunked_lm_sums(model.logits, h, batch["targets"], batch["weights"])

  def fill_mask(self, model, text: str, top_k: int = 5) -> dict:
    raise ValueError("--fill_mask: a causal LM has no masks to fill; use --generate.")

  def generate(
    self,
    model,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
  ) -> dict:
    """Continues `prompt` (after <s>, no </s>) one token at a time with `model.step`.

    temperature 0 takes the most likely token (greedy), else samples from the softmax of
    logits / temperature, cut to the `top_k` most likely (0: no cut). Special tokens other than
    eos are never produced: they are never a counted target in training. Stops at eos, after
    `max_new_tokens`, or when the sequence fills config.model.max_len positions; `stop` says
    which. The decoding step is jitted once per model structure (the position is an argument,
    not a constant), so a token costs one cached step, not a new trace or a full forward pass.
    """
    if max_new_tokens < 1:
      raise ValueError(f"--max_new_tokens={max_new_tokens}: give a number of tokens >= 1.")
    if temperature < 0:
      raise ValueError(f"--temperature={temperature}: give 0 (greedy) or a value > 0.")
    if top_k < 0:
      raise ValueError(f"--top_k={top_k}: give 0 (no cut) or a number of tokens >= 1.")
    tok = self.tokenizer
    prompt_ids = [tok.bos_id, *tok.encode(prompt)]
    n = self.config.model.max_len
    if len(prompt_ids) >= n:
      raise ValueError(
        f"--generate: the prompt is {len(prompt_ids)} tokens with <s>; the model takes "
        f"config.model.max_len={n} positions, so at most {n - 1} leave room for a new token. "
        "Shorten it."
      )
    banned = np.zeros([model.cfg.vocab_size], bool)
    banned[[i for i in tok.special_ids if i != tok.eos_id and i < len(banned)]] = True

    graphdef, state = nnx.split(model)
    step = self._decode_step(graphdef)
    cache = model.init_cache(1)
    rng = np.random.default_rng(seed)
    new_ids, stop = [], "max_len"
    logits = None
    for position in range(n):
      token = prompt_ids[position] if position < len(prompt_ids) else new_ids[-1]
      logits, cache = step(
        state, jnp.asarray([token], jnp.int32), cache, jnp.asarray(position, jnp.int32)
      )
      if position + 1 < len(prompt_ids):
        continue  # prefill: the prompt's own next tokens are known
      choice = _choose(np.asarray(logits[0], np.float64), banned, temperature, top_k, rng)
      if choice == tok.eos_id:
        stop = "eos"
        break
      new_ids.append(choice)
      if len(new_ids) == max_new_tokens:
        stop = "max_new_tokens"
        break
      if len(prompt_ids) + len(new_ids) == n:
        break  # every position is used: the next token would have no position embedding
    text = tok.decode(prompt_ids)
    full = tok.decode(prompt_ids + new_ids)
    continuation = full[len(text) :] if full.startswith(text) else tok.decode(new_ids)
    return {
      "prompt": prompt,
      "continuation": continuation,
      "prompt_ids": prompt_ids,
      "token_ids": new_ids,
      "stop": stop,
    }

  def _decode_step(self, graphdef):
    """`model.step` jitted for models of this structure (`nnx.split`), traced once and reused
    by later calls of `generate` (the weights are an argument)."""
    steps = self.__dict__.setdefault("_decode_steps", {})
    if graphdef not in steps:

      def step(state, token, cache, position):
        return nnx.merge(graphdef, state).step(token, cache, position)

      steps[graphdef] = jax.jit(step)
    return steps[graphdef]


def _choose(
  logits: np.ndarray, banned: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator
) -> int:
  """The next token from one row of logits: argmax at temperature 0, else a sample."""
  logits = np.where(banned, -np.inf, logits)
  if temperature == 0:
    return int(np.argmax(logits))
  logits = logits / temperature
  if top_k:
    cut = np.sort(logits)[-min(top_k, len(logits))]
    logits = np.where(logits < cut, -np.inf, logits)
  p = np.exp(logits - logits.max())
  return int(rng.choice(len(p), p=p / p.sum()))
