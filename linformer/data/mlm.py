"""RoBERTa FULL-SENTENCES packing and dynamic masking, as a grain pipeline.

Packing (done once per split and tokenizer, cached as .npy): every document
is tokenized and the documents are concatenated into one token stream with
eos between documents. Block i of length n is

    [bos] + stream[i*(n-2) : (i+1)*(n-2)] + [eos]   (the last one padded)

so blocks are random-access: grain can shuffle them per epoch and checkpoint
the iterator exactly, and no token is lost or repeated.

Masking (per example, each time it is read): the rng comes from grain's
`random_map`, i.e. from the seed and the example's position in the (repeated)
stream, so masks differ across epochs yet are reproducible. Exactly
`min(max_predictions, max(1, round(mask_prob * num_maskable)))` positions are
drawn without replacement among the non-special tokens; 80% become mask_id,
10% a random non-special id, 10% stay.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import uuid
from collections.abc import Sequence

import grain
import numpy as np
import tqdm

from linformer.data import pipeline
from linformer.data.tokenizer import Tokenizer

_CACHE_FORMAT = 1  # Bump when the packed format changes.
_MAX_CHARS_PER_CALL = 100_000  # Very long documents are encoded in pieces.


# Packing.


def _pieces(text: str) -> list[str]:
  """Splits very long text at line (else space) breaks, bounding encode cost."""
  pieces = []
  while len(text) > _MAX_CHARS_PER_CALL:
    cut = text.rfind("\n", 0, _MAX_CHARS_PER_CALL)
    if cut <= 0:
      cut = text.rfind(" ", 0, _MAX_CHARS_PER_CALL)
    if cut <= 0:
      cut = _MAX_CHARS_PER_CALL
    pieces.append(text[:cut])
    text = text[cut:]
  return pieces + [text]


class _EncodeDocuments(grain.transforms.Map):
  """A batch of documents -> their ids, each document followed by eos."""

  def __init__(self, tokenizer: Tokenizer, dtype):
    self._tokenizer = tokenizer
    self._dtype = dtype

  def map(self, texts: Sequence[str]) -> np.ndarray:
    out = []
    for text in texts:
      ids = [i for ids in self._tokenizer.encode_batch(_pieces(text)) for i in ids]
      if ids:  # Empty documents add nothing, not even a separator.
        out.append(np.asarray(ids + [self._tokenizer.eos_id], self._dtype))
    return np.concatenate(out) if out else np.zeros([0], self._dtype)


def token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def cache_path(
  cache_dir: str, split: str, tokenizer: Tokenizer, source_id: str, num_documents: int
) -> str:
  """Where the packed stream of a text source and tokenizer lives.

  The name hashes everything the content depends on, so a different dataset,
  split, field or tokenizer never reuses a stale file.
  """
  key = hashlib.sha1(
    json.dumps(
      {
        "format": _CACHE_FORMAT,
        "source": source_id,
        "split": split,
        "num_documents": num_documents,
        "tokenizer": hashlib.sha1(tokenizer.fingerprint_bytes).hexdigest(),
      },
      sort_keys=True,
    ).encode()
  ).hexdigest()[:12]
  safe_split = "".join(c if c.isalnum() or c in "-_" else "_" for c in split)
  return os.path.join(cache_dir, f"{safe_split}.{key}.tokens.npy")


def tokenize_to_stream(
  texts: Sequence[str],
  tokenizer: Tokenizer,
  path: str,
  *,
  num_workers: int = 0,
  docs_per_batch: int = 64,
  description: str = "Tokenizing",
) -> np.ndarray:
  """Tokenizes all `texts` into one eos-separated stream cached at `path`.

  Returns the stream memory-mapped from the .npy file (uint16 when the vocab
  fits). An existing file is reused: the path must encode what it holds (see
  `cache_path`).
  """
  if not os.path.exists(path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    ds = (
      grain.MapDataset.source(texts)
      .batch(docs_per_batch, batch_fn=list)
      .map(_EncodeDocuments(tokenizer, dtype))
    )
    batches = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))
    batches = pipeline.multiprocess(batches, num_workers)
    unique = uuid.uuid4().hex  # Hosts sharing a workdir may race here.
    raw_path = f"{path}.{unique}.raw"
    total = 0
    with open(raw_path, "wb") as raw:
      for ids in tqdm.tqdm(batches, total=len(ds), desc=description, unit="batch", mininterval=2):
        ids.tofile(raw)
        total += ids.size
    total = max(total - 1, 0)  # Drop the eos after the last document.
    tmp_path = f"{path}.{unique}.tmp"
    with open(tmp_path, "wb") as out, open(raw_path, "rb") as raw:
      np.lib.format.write_array_header_1_0(
        out,
        {
          "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
          "fortran_order": False,
          "shape": (total,),
        },
      )
      _copy_bytes(raw, out, total * np.dtype(dtype).itemsize)
    os.remove(raw_path)
    os.replace(tmp_path, path)  # Atomic: readers never see a partial file.
    logging.info("Packed %d documents into %d tokens at %s", len(texts), total, path)
  return np.load(path, mmap_mode="r")


def _copy_bytes(src, dst, num_bytes: int, chunk: int = 1 << 24):
  while num_bytes > 0:
    data = src.read(min(chunk, num_bytes))
    dst.write(data)
    num_bytes -= len(data)


class PackedBlocks(Sequence[np.ndarray]):
  """Random-access `[bos] + stream chunk + [eos]` blocks of `seq_len` ids.

  `num_blocks` may exceed the data: the extra blocks are `[bos, eos, pad...]`
  fillers with nothing to predict, used to give every host the same number
  of full eval batches.
  """

  def __init__(
    self,
    tokens: np.ndarray,
    seq_len: int,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    num_blocks: int | None = None,
  ):
    if seq_len < 3:
      raise ValueError(f"seq_len={seq_len}: need room for bos, eos and text.")
    self.tokens = tokens
    self.seq_len = seq_len
    self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
    self.num_data_blocks = math.ceil(len(tokens) / (seq_len - 2))
    self._len = self.num_data_blocks if num_blocks is None else num_blocks

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> np.ndarray:  # pytype: disable=signature-mismatch
    if not 0 <= index < self._len:
      raise IndexError(index)
    start = index * (self.seq_len - 2)
    chunk = self.tokens[start : start + self.seq_len - 2]
    block = np.full([self.seq_len], self.pad_id, np.int32)
    block[0] = self.bos_id
    block[1 : 1 + len(chunk)] = chunk
    block[1 + len(chunk)] = self.eos_id
    return block


# Masking.


def default_max_predictions(seq_len: int, mask_prob: float = 0.15) -> int:
  return math.ceil(mask_prob * seq_len)


class MaskTokens(grain.transforms.RandomMap):
  """Dynamic BERT masking of one block; see the module docstring."""

  def __init__(
    self,
    *,
    special_ids: Sequence[int],
    mask_id: int,
    pad_id: int,
    vocab_size: int,
    max_predictions: int,
    mask_prob: float = 0.15,
  ):
    self.special_ids = np.asarray(sorted(special_ids), np.int32)
    self.mask_id = mask_id
    self.pad_id = pad_id
    self.max_predictions = max_predictions
    self.mask_prob = mask_prob
    self.replacement_ids = np.setdiff1d(np.arange(vocab_size, dtype=np.int32), self.special_ids)

  def random_map(self, block: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = np.array(block, np.int32)
    maskable = np.flatnonzero(~np.isin(ids, self.special_ids))
    num = 0
    if maskable.size:
      num = min(self.max_predictions, max(1, round(self.mask_prob * maskable.size)))
    positions = np.sort(rng.choice(maskable, num, replace=False))
    targets = ids[positions]
    action = rng.random(num)
    ids[positions[action < 0.8]] = self.mask_id
    randomize = positions[(action >= 0.8) & (action < 0.9)]
    ids[randomize] = rng.choice(self.replacement_ids, randomize.size)

    pad = self.max_predictions - num
    return {
      "input_ids": ids,
      "attention_mask": (np.asarray(block) != self.pad_id).astype(np.int32),
      "mlm_positions": np.pad(positions, (0, pad)).astype(np.int32),
      "mlm_targets": np.pad(targets, (0, pad)).astype(np.int32),
      "mlm_weights": np.pad(np.ones(num, np.float32), (0, pad)),
    }


# The pipeline.


def eval_batches_per_host(num_tokens: int, seq_len: int, batch_size: int, shard_count: int) -> int:
  """Full eval batches per host of a packed stream (the last ones padded with fillers)."""
  num_blocks = math.ceil(num_tokens / (seq_len - 2))
  return pipeline.eval_batches_per_host(num_blocks, batch_size, shard_count)


def make_mlm_dataset(
  tokens: np.ndarray,
  tokenizer: Tokenizer,
  batching: pipeline.Batching,
  *,
  train: bool,
  max_predictions: int | None = None,
  mask_prob: float = 0.15,
) -> grain.IterDataset:
  """Batches of masked blocks for one host.

  Train: shuffled each epoch, repeated forever, incomplete batches dropped;
  `iter()` gives a `grain.DatasetIterator` whose `get_state()`/`set_state()`
  resume exactly (or save it with `grain.checkpoint.CheckpointSave`).
  Eval: one pass in order with a fixed mask, padded with filler blocks
  (all-zero `mlm_weights`) so every host gets the same number of full batches.

  Args:
    tokens: the packed stream (`tokenize_to_stream`).
    tokenizer: provides the special ids and vocab size.
    batching: block length n (`seq_len`), this host's batch size, the shuffle and mask seed,
      the shard and grain workers.
    train: see above.
    max_predictions: m, mask slots per example; None -> ceil(mask_prob * n).
    mask_prob: fraction of maskable tokens to predict.
  """
  if max_predictions is None:
    max_predictions = default_max_predictions(batching.seq_len, mask_prob)
  masking = MaskTokens(
    special_ids=tokenizer.special_ids,
    mask_id=tokenizer.mask_id,
    pad_id=tokenizer.pad_id,
    vocab_size=tokenizer.vocab_size,
    max_predictions=max_predictions,
    mask_prob=mask_prob,
  )
  return make_block_dataset(tokens, tokenizer, masking, batching, train=train)


def make_block_dataset(
  tokens: np.ndarray,
  tokenizer: Tokenizer,
  example: grain.transforms.Map | grain.transforms.RandomMap,
  batching: pipeline.Batching,
  *,
  train: bool,
) -> grain.IterDataset:
  """One host's batches of `PackedBlocks`, each block made an example by `example` (a grain
  `Map`, or a `RandomMap` seeded by `batching.seed`): the pipeline of every pretraining
  objective (MLM here, causal LM in `clm.py`); see `make_mlm_dataset` for the arguments."""
  b = batching.resolved()
  seq_len, shard_count = b.seq_len, b.shard_count
  num_blocks = None  # Train: exactly the data.
  if not train:
    num_blocks = (
      shard_count
      * b.batch_size
      * eval_batches_per_host(len(tokens), seq_len, b.batch_size, shard_count)
    )
  blocks = PackedBlocks(
    tokens,
    seq_len,
    bos_id=tokenizer.bos_id,
    eos_id=tokenizer.eos_id,
    pad_id=tokenizer.pad_id,
    num_blocks=num_blocks,
  )
  if len(blocks) < shard_count:
    raise ValueError(
      f"The training data has {len(blocks)} blocks of seq_len={seq_len}, "
      f"fewer than the {shard_count} hosts: use a bigger corpus "
      "(config.data.dataset) or a shorter sequence length."
    )

  # Shuffle, repeat and transform the global sequence of blocks, cut it into
  # per-host batches and give host h every shard_count-th batch: global batch j
  # is then examples [j*B, (j+1)*B) in order, host h holding rows
  # [h*B/P, (h+1)*B/P) of it, whatever the number of hosts P. Hosts never share
  # a permutation or a mask rng.
  ds = grain.MapDataset.source(blocks)
  if train:
    ds = ds.shuffle(seed=b.seed).repeat()
  if isinstance(example, grain.transforms.RandomMap):
    ds = ds.random_map(example, seed=b.seed)
  else:
    ds = ds.map(example)
  return pipeline.host_batches(ds, b, drop_remainder=train)


# Baseline.


def _counts(tokens: np.ndarray, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
  counts = np.zeros([vocab_size], np.int64)
  for start in range(0, len(tokens), chunk):
    counts += np.bincount(
      np.asarray(tokens[start : start + chunk], np.int64), minlength=vocab_size
    )[:vocab_size]
  return counts


def unigram_perplexity(
  train_tokens: np.ndarray,
  eval_tokens: np.ndarray,
  vocab_size: int,
  special_ids: Sequence[int] = (),
) -> float:
  """Perplexity of an add-one unigram model on the eval maskable tokens.

  The floor an MLM must beat: predicting masked tokens from frequency alone.
  The unigram is estimated on `train_tokens` over the non-special vocabulary.
  """
  special = np.zeros([vocab_size], bool)
  special[list(special_ids)] = True
  counts = np.where(special, 0, _counts(train_tokens, vocab_size) + 1)
  log_probs = np.log(np.maximum(counts, 1)) - np.log(counts.sum())
  eval_counts = np.where(special, 0, _counts(eval_tokens, vocab_size))
  if eval_counts.sum() == 0:
    return float("nan")
  return float(np.exp(-(eval_counts * log_probs).sum() / eval_counts.sum()))
