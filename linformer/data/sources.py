"""Random-access text of any TFDS dataset, read without TensorFlow.

`load_text_source('lm1b', 'train', 'text', data_dir)` returns a sequence of
`str` backed by `tfds.data_source` (ArrayRecord files), which grain can index,
shuffle and shard. The project's own builders (`pydocs`, `text_files`,
`listops`) are prepared on first use. Any other TFDS dataset (`lm1b`,
`wikipedia`, `c4`, ...) must be prepared beforehand, on a machine with network,
with `tfds build NAME --file_format=array_record --data_dir=DIR`, and DIR given
as `config.data.data_dir`: a run never downloads (offline it would hang on
retries), and reading needs only the prepared files.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow_datasets as tfds

from linformer.config import ConfigError
from linformer.data import pydocs, text_files  # noqa: F401  (pydocs: registers its builder)
from linformer.data.pipeline import (
  PROJECT_BUILDERS,
  decode_text,
  ensure_prepared,
  not_text_fraction,
  open_builder,
  unknown_splits,
)

__all__ = ["PROJECT_BUILDERS", "TextSource", "get_builder", "load_text_source"]
# A corpus whose sampled characters are more than this fraction undecodable (U+FFFD) or
# control characters is not text (e.g. binary files read as text).
MAX_NOT_TEXT_FRACTION = 0.1


class TextSource(Sequence[str]):
  """Sequence of one text field of a TFDS data source, decoded to `str`."""

  def __init__(self, data_source, field: str, name: str, split: str):
    self._source = data_source
    self.field = field
    self.name = name  # TFDS full name, e.g. 'lm1b/1.1.0'.
    self.split = split

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> str:  # pytype: disable=signature-mismatch
    return decode_text(self._source[index][self.field])

  def __repr__(self):
    return f"{self.name}[{self.split}].{self.field}"


def get_builder(dataset: str, data_dir: str | None, config: tfds.core.BuilderConfig | None = None):
  """The TFDS builder of `dataset`; an unknown name is a ConfigError naming the field."""
  kwargs = {"config": config} if config is not None else {}
  return open_builder(dataset, data_dir, f"config.data.dataset={dataset!r}", **kwargs)


def load_text_source(
  dataset: str,
  split: str,
  field: str = "text",
  data_dir: str | None = None,
  prepare: bool = True,
  *,
  config: tfds.core.BuilderConfig | None = None,
) -> TextSource:
  """Random-access texts of `dataset[split][field]`.

  Args:
    dataset: TFDS name, optionally with config and version ('c4/en:3.1.0').
    split: split name; TFDS slicing ('train[:10%]') works too.
    field: the text feature to read.
    data_dir: TFDS data dir; None means $TFDS_DATA_DIR or
      ~/tensorflow_datasets.
    prepare: prepare (download and write ArrayRecord files) if missing.
    config: a BuilderConfig object, e.g. `text_files.text_files_config(...)`
      for `dataset='text_files'`.
  """
  builder = get_builder(dataset, data_dir, config)
  if not prepare and not builder.is_prepared():
    raise FileNotFoundError(
      f"config.data.dataset={dataset!r} is not prepared under "
      f"config.data.data_dir={data_dir!r} ({builder.data_dir}): call with "
      f"prepare=True or run `tfds build {dataset} --file_format="
      "array_record --data_dir=...`."
    )
  ensure_prepared(builder, f"config.data.dataset={dataset!r}", data_dir)

  features = builder.info.features
  if field not in features:
    raise ConfigError(
      f"config.data.field={field!r}: dataset {dataset!r} has no such feature;"
      f" its features are {sorted(features.keys())}."
    )
  known_splits = list(builder.info.splits.keys())
  if unknown_splits(split, known_splits):
    raise ConfigError(
      f"split {split!r} (config.data.train_split / eval_split): dataset "
      f"{dataset!r} has splits {known_splits}."
    )
  try:
    data_source = builder.as_data_source(split=split)
  except (ValueError, NotImplementedError, FileNotFoundError) as e:
    raise ConfigError(
      f"config.data.dataset={dataset!r}, split={split!r}: cannot open as a "
      f"random-access data source under data_dir={builder.data_dir!r} ({e})"
      f". Prepare it as ArrayRecord: `tfds build {dataset} --file_format="
      "array_record --data_dir=...`."
    ) from e
  return TextSource(data_source, field, builder.info.full_name, split)


def check_is_text(texts: Sequence[str], what: str, samples: int = 64) -> None:
  """A ConfigError if `texts` (a sample of `samples` documents spread over it) are mostly
  undecodable bytes (U+FFFD after UTF-8 decoding) or control characters: not a text corpus."""
  if not len(texts):
    return
  step = max(len(texts) // samples, 1)
  sample = "".join(texts[i][:10_000] for i in range(0, len(texts), step)[:samples])
  bad = not_text_fraction(sample)
  if bad > MAX_NOT_TEXT_FRACTION:
    raise ConfigError(
      f"{what}: not text: {bad:.0%} of the characters of a sample are undecodable (U+FFFD) or "
      "control characters. Fix: give UTF-8 text (e.g. .txt or .txt.gz files)."
    )


def text_files_config_from(config_data) -> text_files.TextFilesConfig | None:
  """The `text_files` BuilderConfig described by `config.data`, if used."""
  if config_data.dataset.split("/")[0] != "text_files":
    return None
  return text_files.text_files_config(
    train_patterns=list(config_data.text_files_train_patterns),
    validation_patterns=list(config_data.text_files_validation_patterns),
    validation_fraction=config_data.text_files_validation_fraction,
    one_doc_per_file=config_data.text_files_one_doc_per_file,
    text_field=config_data.get("text_field", "text"),
    strip_markup=config_data.get("strip_markup", False),
  )
