"""`text_files`: a user's own corpus as a TFDS dataset (HF `run_mlm.py`'s `--train_file`).

Files are given as glob patterns in a `TextFilesConfig`, each file optionally gzipped; its
format comes from its name, as for fine-tuning files (`linformer/data/files.py`):
- `.jsonl` / `.json` (JSON lines), `.csv` (a header, RFC 4180 quoting) and `.tsv` (a header,
  GLUE's format): one document a row, the column `text_field` (IMDB's JSON lines: `text`);
- anything else is plain text: documents separated by blank lines, or whole files
  (`one_doc_per_file=True`); bytes that are not UTF-8 are decoded as U+FFFD.
With `strip_markup`, markup tags such as IMDB's `<br />` become spaces (`pipeline.strip_markup`).
Blank documents are skipped; a file with none, a missing column, a table that is not UTF-8 or a
plain-text file that is mostly not text is a `ConfigError` naming the file, before anything is
written.

The `validation` split comes from `validation_patterns` when given, else from
a stable hash of each document's file name and index, so the same files always
split the same way, wherever they lie.

The config name is a hash of the options and of the matched files' paths and
sizes: different corpora never share a directory under `data_dir`, and a
changed corpus is prepared anew.

    config = text_files_config(train_patterns=['/data/books/*.txt.gz'])
    config = text_files_config('imdb/train.jsonl.gz', text_field='text', strip_markup=True)
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
from linformer.data import files
from linformer.data.pipeline import not_text_fraction, strip_markup


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
  """Which files make the corpus and how they split into documents."""

  train_patterns: tuple[str, ...] = ()
  validation_patterns: tuple[str, ...] = ()
  validation_fraction: float = 0.05  # Used when validation_patterns is empty.
  one_doc_per_file: bool = False  # Plain-text files only.
  text_field: str = "text"  # The column of JSON lines / CSV / TSV files that holds the text.
  strip_markup: bool = False


def file_format(path: str) -> str:
  """'jsonl', 'csv' or 'tsv' for a table (optionally .gz), else 'text'."""
  name = path[:-3] if path.endswith(".gz") else path
  return files.FORMATS.get(os.path.splitext(name)[1].lower(), "text")


def _patterns(patterns: str | Sequence[str]) -> tuple[str, ...]:
  """One glob pattern or several."""
  return (patterns,) if isinstance(patterns, str) else tuple(patterns)


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
      "patterns of existing files (.txt, .jsonl, .csv, .tsv, optionally .gz)."
    )
  return files


def text_files_config(
  train_patterns: str | Sequence[str],
  validation_patterns: str | Sequence[str] = (),
  validation_fraction: float = 0.05,
  one_doc_per_file: bool = False,
  text_field: str = "text",
  strip_markup: bool = False,
) -> TextFilesConfig:
  """A `TextFilesConfig` named by a hash of its options and matched files, which are checked
  here (`check_file`): a bad file is a ConfigError before anything is prepared."""
  train_patterns, validation_patterns = _patterns(train_patterns), _patterns(validation_patterns)
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
  matched = {
    "train": _expand(train_patterns, "text_files_train_patterns"),
    "validation": _expand(validation_patterns, "text_files_validation_patterns"),
  }
  shared = {os.path.realpath(f) for f in matched["train"]} & {
    os.path.realpath(f) for f in matched["validation"]
  }
  if shared:
    raise ValueError(
      f"config.data.text_files_validation_patterns: {sorted(shared)[0]} is also matched by "
      "text_files_train_patterns, so the validation text would be trained on. Fix: narrow the "
      "train patterns."
    )
  if not isinstance(text_field, str) or not text_field:
    raise ValueError(
      f"config.data.text_field={text_field!r}: name the column of the JSON lines / CSV / TSV "
      "files that holds the text, e.g. text."
    )
  for split, paths in matched.items():
    for path in paths[:MAX_FILES_CHECKED]:
      check_file(path, f"config.data.text_files_{split}_patterns", text_field)
  tables = any(file_format(f) != "text" for v in matched.values() for f in v)
  fingerprint = json.dumps(
    {
      "files": {
        k: [(os.path.abspath(f), os.path.getsize(f)) for f in v] for k, v in matched.items()
      },
      "validation_fraction": validation_fraction if not validation_patterns else None,
      "one_doc_per_file": one_doc_per_file,
      # Only where they change the documents, so existing corpora keep their names.
      **({"text_field": text_field} if tables else {}),
      **({"strip_markup": True} if strip_markup else {}),
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
    text_field=text_field,
    strip_markup=strip_markup,
  )


# Files whose first bytes are checked to be text (`check_text_file`), per split, and how much.
MAX_FILES_CHECKED = 1000
_SAMPLE_BYTES = 1 << 16
# More than this fraction of undecodable (U+FFFD) or control characters: not text.
MAX_NOT_TEXT_FRACTION = 0.1


def check_file(path: str, field: str, text_field: str = "text") -> None:
  """A ConfigError naming `path` (and the line, where there is one) unless it holds documents: a
  table is read whole (`files.read_table`: UTF-8, well-formed, the `text_field` column a string in
  every row, not all blank); a plain-text file's first 64 KiB are checked (`check_text_file`)."""
  if file_format(path) == "text":
    check_text_file(path, field)
    return
  table = files.read_table(path, field)
  files.check_columns(table, {text_field: "the text, config.data.text_field"}, field)
  blank = True
  for row, (_, line) in zip(table.rows, table.where):
    value = row[text_field]
    if not isinstance(value, str):
      raise ConfigError(
        f"{field}: {path} line {line}: the text field {text_field!r} is a "
        f"{type(value).__name__}, not a string. Fix: config.data.text_field names the text column."
      )
    blank = blank and not value.strip()
  if blank:
    raise ConfigError(
      f"{field}: {path} has no text: the column {text_field!r} is blank in every row. Fix: "
      "config.data.text_field names the text column."
    )


def check_text_file(path: str, field: str) -> None:
  """A ConfigError naming `path` if it is empty or its first 64 KiB are not text: mostly bytes
  that are not UTF-8 (random or binary data) or control characters, or a .gz that does not
  decompress."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      sample = f.read(_SAMPLE_BYTES)
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
    raise ConfigError(
      f"{field}: {path} cannot be read ({e}). Fix: give .txt or .txt.gz files."
    ) from None
  if not sample.strip():
    raise ConfigError(
      f"{field}: {path} is empty{' (blank lines only)' if sample else ''}. Fix: remove it, or "
      "narrow the glob."
    )
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


def iter_documents(
  path: str, one_doc_per_file: bool = False, text_field: str = "text", strip: bool = False
) -> Iterator[str]:
  """Non-blank documents of one file; plain text is streamed (files may be large)."""
  if strip:
    for text in iter_documents(path, one_doc_per_file, text_field):
      text = strip_markup(text).strip()
      if text:
        yield text
    return
  if file_format(path) != "text":
    table = files.read_table(path, "config.data.text_files_*_patterns")
    yield from (row[text_field].strip() for row in table.rows if row[text_field].strip())
    return
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
  """A stable, uniform number in [0, 1) for a document key ('path:index'), from the file's name
  and the index only: the same files split the same way wherever they lie and however the
  pattern names them (relative or absolute)."""
  path, index = key.rsplit(":", 1)
  name = f"{os.path.basename(path)}:{index}"
  return int(hashlib.sha1(name.encode()).hexdigest()[:15], 16) / 16**15


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
      raise ConfigError(
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
    c = self.builder_config
    docs = iter_documents(path, c.one_doc_per_file, c.text_field, c.strip_markup)
    for index, text in enumerate(docs):
      yield f"{path}:{index}", text

  def _generate_examples(self, files, keep=lambda key: True):
    for path in files:
      for key, text in self._documents(path):
        if keep(key):
          yield key, {"id": key, "text": text}
