"""Random-access text of any TFDS dataset, read without TensorFlow.

`load_text_source('lm1b', 'train', 'text', data_dir)` returns a sequence of
`str` backed by `tfds.data_source` (ArrayRecord files), which grain can index,
shuffle and shard. The project's own builders (`pydocs`, `text_files`) are
prepared on first use; so are other TFDS datasets whose builder code runs
without TensorFlow and whose source can be downloaded from this machine.
Datasets whose builder code imports TensorFlow (e.g. `wikipedia`, `c4`) must
be prepared elsewhere with `tfds build NAME --file_format=array_record` and
their `data_dir` given here; reading them needs only the prepared files.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow_datasets as tfds

from linformer.data import pydocs, text_files  # noqa: F401  (pydocs: registers its builder)
from linformer.data.pipeline import decode_text, unknown_splits

PROJECT_BUILDERS = ("pydocs", "text_files", "listops")


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
  """The TFDS builder of `dataset`, with an actionable error if unknown."""
  kwargs = {"config": config} if config is not None else {}
  try:
    return tfds.builder(dataset, data_dir=data_dir, **kwargs)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
      f"config.data.dataset={dataset!r}: unknown TFDS dataset. Project "
      f"builders: {', '.join(PROJECT_BUILDERS)}; or any TFDS name such as "
      "'lm1b', 'wikipedia/20230601.en', 'c4/en' (see tfds.list_builders()). "
      "A dataset whose builder code needs TensorFlow must be prepared "
      "elsewhere as array_record and found under config.data.data_dir="
      f"{data_dir!r}."
    ) from e


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
  if not builder.is_prepared():
    if not prepare:
      raise FileNotFoundError(
        f"config.data.dataset={dataset!r} is not prepared under "
        f"config.data.data_dir={data_dir!r} ({builder.data_dir}): call with "
        f"prepare=True or run `tfds build {dataset} --file_format="
        "array_record --data_dir=...`."
      )
    builder.download_and_prepare(file_format="array_record")

  features = builder.info.features
  if field not in features:
    raise ValueError(
      f"config.data.field={field!r}: dataset {dataset!r} has no such feature;"
      f" its features are {sorted(features.keys())}."
    )
  known_splits = list(builder.info.splits.keys())
  if unknown_splits(split, known_splits):
    raise ValueError(
      f"split {split!r} (config.data.train_split / eval_split): dataset "
      f"{dataset!r} has splits {known_splits}."
    )
  try:
    data_source = builder.as_data_source(split=split)
  except (ValueError, NotImplementedError, FileNotFoundError) as e:
    raise ValueError(
      f"config.data.dataset={dataset!r}, split={split!r}: cannot open as a "
      f"random-access data source under data_dir={builder.data_dir!r} ({e})"
      f". Prepare it as ArrayRecord: `tfds build {dataset} --file_format="
      "array_record --data_dir=...`."
    ) from e
  return TextSource(data_source, field, builder.info.full_name, split)


def text_files_config_from(config_data) -> text_files.TextFilesConfig | None:
  """The `text_files` BuilderConfig described by `config.data`, if used."""
  if config_data.dataset.split("/")[0] != "text_files":
    return None
  return text_files.text_files_config(
    train_patterns=list(config_data.text_files_train_patterns),
    validation_patterns=list(config_data.text_files_validation_patterns),
    validation_fraction=config_data.text_files_validation_fraction,
    one_doc_per_file=config_data.text_files_one_doc_per_file,
  )
