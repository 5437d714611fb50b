"""The pretraining data of a run: tokenizer, train iterator, eval batches.

`build_pretrain_data(config.data, workdir, batching, objective=...)` is the one call training
makes. It reads the corpus from TFDS,
trains or loads the tokenizer (kept in `{workdir}/tokenizer/` and reused on
resume), packs each split once (cached in `{workdir}/data/`) and returns
grain pipelines of masked (`mlm.py`) or causal-LM (`clm.py`) examples of the
same packed blocks.

`config.data` fields (`default_config()`):

  dataset: TFDS name: 'pydocs' (Python docstrings, offline), 'text_files'
    (your own files, see text_files_*), or any TFDS text dataset
    such as 'lm1b', 'wikipedia/20230601.en', 'c4/en' prepared as array_record.
  field: the text feature of `dataset` ('text').
  train_split, eval_split: split names ('train', 'validation'); TFDS slicing
    such as 'train[:1%]' works.
  data_dir: TFDS data dir; None -> $TFDS_DATA_DIR or ~/tensorflow_datasets.
  tokenizer: '' trains a SentencePiece model on train_split; else a path to a
    tokenizer.json, a SentencePiece .model or a saved tokenizer directory.
    Ignored when {workdir}/tokenizer/ already holds one (resume).
  vocab_size: SentencePiece vocab size when training one (8000).
  tokenizer_max_sentences: lines read to train SentencePiece (1,000,000).
  max_predictions: mask slots per example; None -> ceil(mask_prob * seq_len).
  mask_prob: fraction of maskable tokens predicted (0.15).
  num_workers: grain worker processes for tokenizing and batching (0: none).
  cache_dir: packed token streams; None -> {workdir}/data.
  text_files_train_patterns: a glob, or a tuple of globs, of training files
    (dataset='text_files'): .txt, or .jsonl / .json / .csv / .tsv tables (one
    document a row), each optionally .gz (linformer/data/text_files.py).
  text_files_validation_patterns: globs of validation files; empty -> a
    deterministic text_files_validation_fraction of the training documents.
  text_files_validation_fraction: 0.05.
  text_files_one_doc_per_file: False: documents are separated by blank lines.
  text_field: the column of JSON lines / CSV / TSV files holding the text
    ('text'; dataset='text_files').
  strip_markup: markup tags such as IMDB's `<br />` become spaces (False).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import grain
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from linformer.data import clm, mlm, pipeline, sources
from linformer.data.tokenizer import Tokenizer, train_sentencepiece


def default_config() -> ml_collections.ConfigDict:
  """`config.data` with its defaults; fields are documented above."""
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict(
    {
      "dataset": "pydocs",
      "field": "text",
      "train_split": "train",
      "eval_split": "validation",
      "data_dir": placeholder(str),
      "tokenizer": "",
      "vocab_size": 8000,
      "tokenizer_max_sentences": 1_000_000,
      "max_predictions": placeholder(int),
      "mask_prob": 0.15,
      "num_workers": 0,
      "cache_dir": placeholder(str),
      "text_files_train_patterns": (),
      "text_files_validation_patterns": (),
      "text_files_validation_fraction": 0.05,
      "text_files_one_doc_per_file": False,
      "text_field": "text",
      "strip_markup": False,
    }
  )


OBJECTIVES = ("mlm", "clm")


class EvalData:
  """Callable giving a fresh one-pass iterator over the eval batches.

  Also carries what an eval report needs: `num_batches` per host and the
  unigram baseline perplexity (`unigram_perplexity`).
  """

  def __init__(self, dataset: grain.IterDataset, num_batches: int, unigram: Callable[[], float]):
    self.dataset = dataset
    self.num_batches = num_batches
    self._unigram = unigram

  def __call__(self) -> Iterator[dict[str, np.ndarray]]:
    return iter(self.dataset)

  @functools.cached_property
  def unigram_perplexity(self) -> float:
    return self._unigram()


class EvalSplits(Mapping):
  """The eval data of each split, built on first use: 'validation' is
  `config.data.eval_split`, 'train' is `config.data.train_split` evaluated
  in order with a fixed mask (e.g. to compare train and validation loss)."""

  def __init__(self, make: Callable[[str], EvalData]):
    self._make, self._built = make, {}

  SPLITS = ("validation", "train")

  def __getitem__(self, split: str) -> EvalData:
    if split not in self.SPLITS:
      raise KeyError(split)
    if split not in self._built:
      self._built[split] = self._make(split)
    return self._built[split]

  def __iter__(self):
    return iter(self.SPLITS)

  def __len__(self) -> int:
    return len(self.SPLITS)


class PretrainData(NamedTuple):
  tokenizer: Tokenizer
  train_iter: grain.DatasetIterator
  eval_splits: EvalSplits


def tokenizer_training_texts(train_texts: Sequence[str]) -> Iterator[str]:
  """The documents a run's SentencePiece model is trained on: all of them, in a fixed random
  order so that the sentence budget samples the whole corpus, not its first files."""
  order = np.random.default_rng(0).permutation(len(train_texts))
  return (train_texts[int(i)] for i in order)


def _tokenizer_for_run(
  config_data, workdir: str, train_texts: sources.TextSource, given: Tokenizer | None
) -> Tokenizer:
  """`given`, else the run's saved one, else the configured or a new one.

  Whatever is used is saved in `{workdir}/tokenizer/` unless one is there.
  """
  directory = os.path.join(workdir, "tokenizer")
  saved = os.path.isdir(directory) and os.listdir(directory)
  if given is not None:
    tokenizer = given
  elif saved:
    tokenizer = Tokenizer.load(directory)
    logging.info("Reusing the run tokenizer %s", tokenizer)
    return tokenizer
  elif config_data.tokenizer:
    tokenizer = Tokenizer.load(config_data.tokenizer)
  else:
    tokenizer = train_sentencepiece(
      tokenizer_training_texts(train_texts),
      config_data.vocab_size,
      max_sentences=config_data.tokenizer_max_sentences,
    )
  if not saved:
    tokenizer.save(directory)
    logging.info("Saved tokenizer %s to %s", tokenizer, directory)
  return tokenizer


def build_pretrain_data(
  config_data: ml_collections.ConfigDict,
  workdir: str,
  batching: pipeline.Batching,
  *,
  tokenizer: Tokenizer | None = None,
  objective: str = "mlm",
) -> PretrainData:
  """Tokenizer, checkpointable train iterator and eval batches of a run.

  Args:
    config_data: `config.data` (see the module docstring).
    workdir: the run's directory; holds `tokenizer/` and `data/` (caches).
      Multi-host runs need it shared: process 0 makes the tokenizer, the
      others wait and load it.
    batching: tokens per example (bos and eos included), this host's batch size, the
      shuffle and masking seed, grain workers (`pipeline.Batching.of_run(config, ...)`).
    tokenizer: use this one (e.g. from a pretraining run) instead.
    objective: 'mlm' (masked blocks, `mlm.MaskTokens`) or 'clm' (next-token
      targets, `clm.NextTokens`); the tokenizer and caches are the same.

  Returns:
    (tokenizer, train_iter, eval_splits): `train_iter` is an endless
    `grain.DatasetIterator` (save it with `grain.checkpoint.CheckpointSave`);
    `eval_splits['validation']()` gives one pass over the eval split in full
    batches, and has `.num_batches` and `.unigram_perplexity`; 'train' too.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective={objective!r}: use one of {OBJECTIVES}.")
  load = functools.partial(
    sources.load_text_source,
    config_data.dataset,
    field=config_data.field,
    data_dir=config_data.data_dir,
    config=sources.text_files_config_from(config_data),
  )
  train_texts = load(split=config_data.train_split)
  eval_texts = load(split=config_data.eval_split)

  if jax.process_index() == 0:
    tokenizer = _tokenizer_for_run(config_data, workdir, train_texts, tokenizer)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("linformer.data.tokenizer")
  if tokenizer is None:
    tokenizer = Tokenizer.load(os.path.join(workdir, "tokenizer"))

  cache_dir = config_data.cache_dir or os.path.join(workdir, "data")

  def pack(texts: sources.TextSource) -> np.ndarray:
    path = mlm.cache_path(
      cache_dir,
      texts.split,
      tokenizer,
      source_id=f"{texts.name}:{texts.field}",
      num_documents=len(texts),
    )
    return mlm.tokenize_to_stream(
      texts, tokenizer, path, num_workers=config_data.num_workers, description=f"Tokenizing {texts}"
    )

  train_tokens = pack(train_texts)
  eval_tokens = {"validation": pack(eval_texts), "train": train_tokens}

  if objective == "mlm":
    make_dataset = functools.partial(
      mlm.make_mlm_dataset,
      max_predictions=config_data.max_predictions,
      mask_prob=config_data.mask_prob,
    )
    baseline_special_ids = tokenizer.special_ids
  else:
    make_dataset = clm.make_clm_dataset
    baseline_special_ids = clm.unigram_special_ids(tokenizer)  # its targets include eos
  train_ds = make_dataset(train_tokens, tokenizer, batching, train=True)

  def eval_data(split: str) -> EvalData:
    tokens = eval_tokens[split]
    return EvalData(
      make_dataset(tokens, tokenizer, batching, train=False),
      num_batches=mlm.eval_batches_per_host(
        len(tokens), batching.seq_len, batching.batch_size, jax.process_count()
      ),
      unigram=functools.partial(
        mlm.unigram_perplexity,
        train_tokens,
        tokens,
        tokenizer.vocab_size,
        special_ids=baseline_special_ids,
      ),
    )

  return PretrainData(tokenizer, iter(train_ds), EvalSplits(eval_data))
