"""`text_files`: a user's own plain-text corpus as a TFDS dataset.

Files are given as glob patterns of `.txt` / `.txt.gz` files in a
`TextFilesConfig`. Documents are separated by blank lines, or are whole files
(`one_doc_per_file=True`). Bytes that are not UTF-8 are decoded with
U+FFFD replacement characters; empty documents are skipped.

The `validation` split comes from `validation_patterns` when given, else from
a stable hash of each document's key (file path and index), so the same files
always split the same way.

The config name is a hash of the options and of the matched files' paths and
sizes: different corpora never share a directory under `data_dir`, and a
changed corpus is prepared anew.

    config = text_files_config(train_patterns=['/data/books/*.txt.gz'])
    builder = tfds.builder('text_files', config=config, data_dir=...)
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import os
from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds

from linformer.config import ConfigError
from linformer.data.pipeline import not_text_fraction


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
  """Which files make the corpus and how they split into documents."""

  train_patterns: tuple[str, ...] = ()
  validation_patterns: tuple[str, ...] = ()
  validation_fraction: float = 0.05  # Used when validation_patterns is empty.
  one_doc_per_file: bool = False


def _expand(patterns: Sequence[str], field: str) -> list[str]:
  files = sorted(
    {
      f
      for p in patterns
      for f in glob.glob(os.path.expanduser(p), recursive=True)
      if os.path.isfile(f)
    }
  )
  if patterns and not files:
    raise FileNotFoundError(
      f"config.data.{field}={list(patterns)!r}: no file matches; give glob "
      "patterns of existing .txt or .txt.gz files."
    )
  return files


def text_files_config(
  train_patterns: Sequence[str],
  validation_patterns: Sequence[str] = (),
  validation_fraction: float = 0.05,
  one_doc_per_file: bool = False,
) -> TextFilesConfig:
  """A `TextFilesConfig` named by a hash of its options and matched files."""
  if isinstance(train_patterns, str) or isinstance(validation_patterns, str):
    raise TypeError(
      "config.data.text_files_*_patterns: give a list of glob patterns, not a single string."
    )
  if not train_patterns:
    raise ValueError(
      "config.data.dataset='text_files' needs "
      "config.data.text_files_train_patterns (glob patterns)."
    )
  if not validation_patterns and not 0 < validation_fraction < 1:
    raise ValueError(
      f"config.data.text_files_validation_fraction={validation_fraction}: "
      "must be in (0, 1) when no validation patterns are given."
    )
  files = {
    "train": _expand(train_patterns, "text_files_train_patterns"),
    "validation": _expand(validation_patterns, "text_files_validation_patterns"),
  }
  for field, paths in (("train", files["train"]), ("validation", files["validation"])):
    for path in paths[:MAX_FILES_CHECKED]:
      check_text_file(path, f"config.data.text_files_{field}_patterns")
  fingerprint = json.dumps(
    {
      "files": {k: [(os.path.abspath(f), os.path.getsize(f)) for f in v] for k, v in files.items()},
      "validation_fraction": validation_fraction if not validation_patterns else None,
      "one_doc_per_file": one_doc_per_file,
    },
    sort_keys=True,
  )
  digest = hashlib.sha1(fingerprint.encode()).hexdigest()[:16]
  return TextFilesConfig(
    name=f"corpus_{digest}",
    description=f"Text files {list(train_patterns)}.",
    train_patterns=tuple(train_patterns),
    validation_patterns=tuple(validation_patterns),
    validation_fraction=validation_fraction,
    one_doc_per_file=one_doc_per_file,
  )


# Files whose first bytes are checked to be text (`check_text_file`), per split, and how much.
MAX_FILES_CHECKED = 1000
_SAMPLE_BYTES = 1 << 16
# More than this fraction of undecodable (U+FFFD) or control characters: not text.
MAX_NOT_TEXT_FRACTION = 0.1


def check_text_file(path: str, field: str) -> None:
  """A ConfigError naming `path` if its first 64 KiB are not text: mostly bytes that are not UTF-8
  (random or binary data) or control characters, or a .gz that does not decompress."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      sample = f.read(_SAMPLE_BYTES)
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
    raise ConfigError(
      f"{field}: {path} cannot be read ({e}). Fix: give .txt or .txt.gz files."
    ) from None
  text = sample.decode("utf-8", errors="replace")
  if len(sample) == _SAMPLE_BYTES:  # a character cut at the end of the sample is not an error
    text = text.rstrip("\ufffd")
  bad = not_text_fraction(text)
  if bad > MAX_NOT_TEXT_FRACTION:
    raise ConfigError(
      f"{field}: {path} is not text: {bad:.0%} of its first characters are undecodable (not "
      "UTF-8) or control characters. Fix: give UTF-8 .txt or .txt.gz files."
    )


def _read_lines(path: str) -> Iterator[str]:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8", errors="replace", newline=None) as f:
    yield from f


def iter_documents(path: str, one_doc_per_file: bool) -> Iterator[str]:
  """Non-empty documents of one file, streamed (files may be large)."""
  if one_doc_per_file:
    text = "".join(_read_lines(path)).strip()
    if text:
      yield text
    return
  paragraph = []
  for line in _read_lines(path):
    if line.strip():
      paragraph.append(line)
    elif paragraph:
      yield "".join(paragraph).strip()
      paragraph = []
  if paragraph:
    yield "".join(paragraph).strip()


def _hash(key: str) -> float:
  """A stable, uniform number in [0, 1) for a document key."""
  return int(hashlib.sha1(key.encode()).hexdigest()[:15], 16) / 16**15


class TextFiles(tfds.core.GeneratorBasedBuilder):
  """Plain-text files given by glob patterns (see `text_files_config`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = []  # Always built with a `text_files_config(...)`.

  def __init__(self, *, config: TextFilesConfig | str | None = None, **kwargs):
    if not isinstance(config, TextFilesConfig):
      raise ValueError(
        "config.data.dataset='text_files' needs a TextFilesConfig: pass "
        "config=linformer.data.text_files.text_files_config(train_patterns="
        "[...]), i.e. set config.data.text_files_train_patterns."
      )
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {"id": tfds.features.Text(), "text": tfds.features.Text()}
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    config = self.builder_config
    train_files = _expand(config.train_patterns, "text_files_train_patterns")
    if config.validation_patterns:
      val_files = _expand(config.validation_patterns, "text_files_validation_patterns")
      return {
        "train": self._generate_examples(train_files),
        "validation": self._generate_examples(val_files),
      }
    # TFDS cannot write an empty split: on a tiny corpus, move the threshold
    # so that both splits get at least one document.
    hashes = [_hash(key) for path in train_files for key, _ in self._documents(path)]
    if len(hashes) < 2:
      raise ValueError(
        f"config.data.text_files_train_patterns={list(config.train_patterns)}"
        f": found {len(hashes)} non-empty document(s); need at least 2 to "
        "make a validation split, or give text_files_validation_patterns."
      )
    threshold = max(config.validation_fraction, min(hashes))
    if threshold >= max(hashes):
      threshold = min(hashes)
    return {
      "train": self._generate_examples(train_files, lambda key: _hash(key) > threshold),
      "validation": self._generate_examples(train_files, lambda key: _hash(key) <= threshold),
    }

  def _documents(self, path):
    for index, text in enumerate(iter_documents(path, self.builder_config.one_doc_per_file)):
      yield f"{path}:{index}", text

  def _generate_examples(self, files, keep=lambda key: True):
    for path in files:
      for key, text in self._documents(path):
        if keep(key):
          yield key, {"id": key, "text": text}
