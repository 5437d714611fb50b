"""Causal-LM examples from the same packed blocks as MLM (`mlm.PackedBlocks`).

A block `[bos] + stream chunk + [eos] + pad...` is read unmasked; position i predicts token i+1.
A target counts (weight 1) when it is a token of the stream: text, or the eos that separates two
documents (so a model learns where a document ends, which is where generation stops). Not
counted: the eos that closes the block (a block boundary, not text: the stream chunk ends there
only because the block is full), padding and the other special ids. The counted targets are
then each stream token exactly once, the tokens whose unigram perplexity is reported beside
(`unigram_special_ids`), and a `[bos, eos, pad...]` eval filler counts nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from linformer.data import mlm, pipeline
from linformer.data.tokenizer import Tokenizer


class NextTokens(grain.transforms.Map):
  """One block -> `input_ids`, `attention_mask`, `targets` (the next token) and `weights`."""

  def __init__(self, *, special_ids: Sequence[int], eos_id: int, pad_id: int):
    self.pad_id = pad_id
    # Special ids that are never a counted target: all of them but the document separator.
    self.uncounted_ids = np.asarray(sorted(set(special_ids) - {eos_id}), np.int32)

  def map(self, block: np.ndarray) -> dict[str, np.ndarray]:
    ids = np.array(block, np.int32)
    real = ids != self.pad_id
    targets = np.append(ids[1:], self.pad_id).astype(np.int32)
    weights = ~np.isin(targets, self.uncounted_ids)
    closing = int(real.sum()) - 1  # the block's closing eos (blocks are padded at the end)
    weights[closing - 1 :] = False
    return {
      "input_ids": ids,
      "attention_mask": real.astype(np.int32),
      "targets": targets,
      "weights": weights.astype(np.float32),
    }


def unigram_special_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
  """The ids a unigram baseline of CLM targets leaves out: the specials but eos, which the
  stream holds between documents and the model predicts."""
  return tuple(i for i in tokenizer.special_ids if i != tokenizer.eos_id)


def make_clm_dataset(
  tokens: np.ndarray, tokenizer: Tokenizer, batching: pipeline.Batching, *, train: bool
) -> grain.IterDataset:
  """Batches of causal-LM examples for one host: the MLM pipeline (`mlm.make_block_dataset`:
  shuffled and repeated for training, eval padded with fillers of zero weight) with
  `NextTokens` in place of masking."""
  example = NextTokens(
    special_ids=tokenizer.special_ids, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id
  )
  return mlm.make_block_dataset(tokens, tokenizer, example, batching, train=train)
