"""Fine-tuning data: GLUE, IMDB and ListOps as grain pipelines of fixed shape.

`build_classification_data(config.data, tokenizer, seq_len=...,
per_host_batch_size=..., seed=...)` is the one call fine-tuning makes. It
reads the dataset's TFDS splits as random-access data sources
(`tfds.data_source`, ArrayRecord, no TensorFlow), tokenizes each example
lazily in the grain map and returns a checkpointable train iterator and
one-pass eval batches per eval split.

The datasets and the `config.data` fields are in `linformer.data.datasets`;
how an example becomes token ids (templates, truncation, label checks) is in
`linformer.data.encoding`.

Batches (dicts of numpy arrays, B = per-host batch size, n = seq_len):

  input_ids, attention_mask, token_type_ids: int32 [B, n].
  labels: int32 [B] class ids, float32 [B] for regression (stsb).
  weights: float32 [B]: 1 for real examples, 0 for eval padding rows.

Train: shuffled each epoch from `seed`, repeated forever, batched with the
remainder dropped (batches run across epoch boundaries); global batch j is
examples [j*B*P, (j+1)*B*P) of that stream and host h holds rows
[h*B, (h+1)*B) of it (P hosts), so the data does not depend on P.
`train_iter.get_state()/set_state()` resume exactly (or save it with
`grain.checkpoint.CheckpointSave`). Eval: one pass in order, padded with
filler rows (`[bos] [eos]` or the empty pair, label 0, weight 0) so every
host gets the same number of full batches.
"""

from __future__ import annotations

import importlib
import logging
import os
import types
from collections.abc import Iterator, Sequence

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

# tfds imports its dataset modules lazily and, without TensorFlow, never
# imports the legacy ones: this registers `glue` (`imdb_reviews` and `lm1b`
# are registered by name).
import tensorflow_datasets.text  # noqa: F401  (registers glue)

from linformer.config import ConfigError
from linformer.data import files as files_lib
from linformer.data import pipeline
from linformer.data.datasets import FILES, DatasetSpec, dataset_name, files_spec, spec_from_config
from linformer.data.encoding import EncodeExample, Template, resolve_truncation, template_for
from linformer.data.tokenizer import Tokenizer

# Sources.


class _Indexed(Sequence):
  """(index, record) of a data source, then (index, None) fillers up to size."""

  def __init__(self, source, size: int | None = None):
    self._source = source
    self._num_records = len(source)
    self._size = self._num_records if size is None else size

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, index: int):  # pytype: disable=signature-mismatch
    if not 0 <= index < self._size:
      raise IndexError(index)
    if index >= self._num_records:
      return index, None
    return index, self._source[index]


def _builder(spec: DatasetSpec, data_dir: str | None):
  dataset = spec.tfds_name.split("/")[0]
  if dataset == "listops":
    try:  # Registers the project's builder.
      importlib.import_module("linformer.data.listops")
    except ModuleNotFoundError as e:
      if e.name != "linformer.data.listops":
        raise
      raise ConfigError(
        "config.data.dataset='listops' needs the ListOps TFDS builder in linformer/data/listops.py."
      ) from e
  field = f"config.data.dataset={spec.name!r}"
  if dataset == "listops":
    field = f"config.data.listops_config={spec.tfds_name.split('/', 1)[-1]!r}"
  return pipeline.open_builder(spec.tfds_name, data_dir, field)


class _Builder:
  """The dataset's TFDS builder, opened on first use: a run whose splits all come from files
  never needs TFDS (nor the dataset prepared)."""

  def __init__(self, spec: DatasetSpec, data_dir: str | None):
    self.spec, self.data_dir, self._builder = spec, data_dir, None

  @property
  def opened(self) -> bool:
    return self._builder is not None

  def get(self):
    if self._builder is None:
      self._builder = _builder(self.spec, self.data_dir)
    return self._builder


def file_for(spec: DatasetSpec, split: str, files) -> str | None:
  """The `config.data.files` key of `split` ('train[:10%]' -> 'train') if it has a file, else
  None (TFDS). A split made of file and TFDS parts is refused."""
  names = pipeline.split_names(split)
  given = [bool((files or {}).get(n)) for n in names]
  if not any(given):
    if spec.name == FILES:
      raise ConfigError(
        f"config.data.files.{names[0]} is not set: dataset='files' reads every split from a "
        f"file. Fix: --config.data.files.{names[0]}=PATH."
      )
    return None
  if not all(given) or len(set(names)) > 1:
    raise ConfigError(
      f"config.data.train_split={split!r} combines several splits; with config.data.files "
      "give one split, optionally sliced (train[:50%])."
    )
  return names[0]


def label_map(spec: DatasetSpec) -> files_lib.LabelMap:
  return files_lib.LabelMap(spec.label_names, spec.num_labels, spec.label_range)


def open_file_split(spec: DatasetSpec, split: str, files, *, require_labels: bool = True):
  """The examples of `split` read from its file (`config.data.files`), sliced as TFDS slices
  ('train[:10%]', 'train[100:200]')."""
  key = file_for(spec, split, files)
  field = f"config.data.files.{key}"
  table = files_lib.read_table(files[key], field)
  source = files_lib.FileSource(
    table, spec.text_fields, spec.label_field, label_map(spec), field, require_labels=require_labels
  )
  if split == key:
    return source
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(
      {key: types.SimpleNamespace(num_examples=len(source))}
    )
  except (ValueError, AssertionError):
    raise ConfigError(
      f"config.data.train_split={split!r}: not a split name with an optional slice. Fix: e.g. "
      f"{key}, {key}[:10%] or {key}[100:200] (TFDS's slicing)."
    ) from None
  indices = [i for ins in instructions for i in range(len(source))[ins.from_ : ins.to]]
  return _Subset(source, indices)


def open_split(
  spec: DatasetSpec, split: str, data_dir: str | None = None, builder=None, files=None
):
  """The random-access data source of `split`: its file if `files` (config.data.files) has one,
  else the TFDS split `spec.tfds_name[split]`.

  Prepares the project's ListOps if needed (any other TFDS dataset must be prepared already:
  `pipeline.ensure_prepared`) and checks its features and splits against the spec.
  """
  if file_for(spec, split, files) is not None:
    return open_file_split(spec, split, files)
  builder = builder.get() if isinstance(builder, _Builder) else builder or _builder(spec, data_dir)
  pipeline.ensure_prepared(builder, f"config.data.dataset={spec.name!r}", data_dir)
  features = builder.info.features
  missing = [f for f in (*spec.text_fields, spec.label_field) if f not in features]
  if missing:
    raise ConfigError(
      f"Dataset {spec.name!r}: {spec.tfds_name} has no features {missing}; its "
      f"features are {sorted(features.keys())}."
    )
  label = features[spec.label_field]
  num_classes = getattr(label, "num_classes", None)
  if spec.is_regression != (num_classes is None) or (
    num_classes is not None and num_classes != spec.num_labels
  ):
    raise ConfigError(
      f"Dataset {spec.name!r} expects {spec.num_labels} labels but "
      f"{spec.tfds_name} has label feature {label}."
    )
  known = list(builder.info.splits.keys())
  if pipeline.unknown_splits(split, known):
    where = " (config.data.train_split)" if split == spec.train_split else ""
    raise ConfigError(
      f"Dataset {spec.name!r}: split {split!r}{where} is not in {spec.tfds_name}, whose "
      f"splits are {known}."
    )
  return builder.as_data_source(split=split)


def read_splits(spec: DatasetSpec) -> list[str]:
  """The splits a run of `spec` reads: its train split and its eval splits."""
  return [spec.train_split, *(split for _, split in spec.eval_splits)]


def check_dataset(
  spec: DatasetSpec,
  data_dir: str | None = None,
  files=None,
  *,
  train_examples: int = 0,
  eval_examples: int = 0,
) -> None:
  """What `build_classification_data` needs of the dataset, checked before a run writes
  anything: it is known, prepared (ListOps is generated if need be) and has the spec's
  features, train split and eval splits; files are read whole (every row and label), no file
  belongs to two splits, and a subset (`train_examples`, `eval_examples`) is no larger than
  its split: a larger one is refused, not clamped, so that config.json records what ran."""
  check_disjoint_files(files)
  builder = _Builder(spec, data_dir)
  for split in read_splits(spec):
    source = open_split(spec, split, data_dir, builder, files)
    field, size = (
      ("train_examples", train_examples)
      if split == spec.train_split
      else ("eval_examples", eval_examples)
    )
    if size > len(source):
      raise ConfigError(
        f"config.data.{field}={size}: the split {split!r} has {len(source)} examples. Fix: "
        f"at most {len(source)}, or 0 for all."
      )


def check_disjoint_files(files) -> None:
  """A ConfigError naming both fields when two splits of config.data.files share a file (the
  same file after globs and symlinks are resolved): the run would score what it trains on."""
  owner = {}
  for key, pattern in (files or {}).items():
    if not pattern:
      continue
    for path in files_lib.expand(pattern, f"config.data.files.{key}"):
      real = os.path.realpath(path)
      if real in owner and owner[real][0] != key:
        other, other_pattern = owner[real]
        raise ConfigError(
          f"config.data.files.{other}={other_pattern!r} and config.data.files.{key}="
          f"{pattern!r} both match {path}: the run would score examples it trains on. Fix: "
          "narrow the glob, or move the file."
        )
      owner[real] = (key, pattern)


def complete_files_config(config_data) -> ml_collections.ConfigDict:
  """config.data with dataset=files's labels read from its train file when not given: the
  sorted distinct labels become `label_names` (kept in the run's config.json, so resume and
  prediction use the same ids). Other datasets are returned as they are."""
  if dataset_name(config_data) != FILES or config_data.get("label_names"):
    return config_data
  if config_data.get("num_labels") == 1:
    return config_data
  spec = files_spec(config_data)
  key = file_for(spec, spec.train_split, config_data.files)
  field = f"config.data.files.{key}"
  table = files_lib.read_table(config_data.files[key], field)
  files_lib.check_columns(
    table,
    {**{f: "a text field" for f in spec.text_fields}, spec.label_field: "the label field"},
    field,
  )
  names = files_lib.discover_labels(row[spec.label_field] for row in table.rows)
  if len(names) < 2:
    raise ConfigError(
      f"{field}: {table.pattern} has one label only ({names[0]!r}) in its column "
      f"{spec.label_field!r}. Fix: a train file with two classes or more, or "
      "config.data.num_labels=1 for a regression."
    )
  config_data = config_data.copy_and_resolve_references()
  with config_data.unlocked():
    config_data.label_names = names
  return config_data


# Subsets.


class _Subset(Sequence):
  def __init__(self, source, indices: Sequence[int]):
    self._source, self._indices = source, list(indices)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int):
    return self._source[self._indices[index]]


def balanced_subset(labels: Sequence, size: int, seed: int, *, regression: bool) -> list[int]:
  """`size` indices of `labels`, sorted, drawn with `seed`: the same number of each class where
  the classes have enough (a class too small gives all it has, the others the rest); a random
  sample for regression."""
  rng = np.random.default_rng(seed)
  if size >= len(labels):
    return list(range(len(labels)))
  if regression:
    return sorted(rng.permutation(len(labels))[:size].tolist())
  by_class: dict = {}
  for i, label in enumerate(labels):
    by_class.setdefault(label, []).append(i)
  pools = [rng.permutation(by_class[c]).tolist() for c in sorted(by_class)]
  taken = [0] * len(pools)
  remaining = size
  while remaining:
    open_pools = [j for j, pool in enumerate(pools) if taken[j] < len(pool)]
    share = max(remaining // len(open_pools), 1)
    for j in open_pools:
      grant = min(share, len(pools[j]) - taken[j], remaining)
      taken[j] += grant
      remaining -= grant
      if not remaining:
        break
  return sorted(i for pool, n in zip(pools, taken) for i in pool[:n])


def _limit(source, size: int, spec: DatasetSpec, seed: int):
  if not size or size >= len(source):
    return source
  labels = [np.asarray(source[i][spec.label_field]).item() for i in range(len(source))]
  return _Subset(source, balanced_subset(labels, size, seed, regression=spec.is_regression))


# The pipeline.


class ClassificationData:
  """The data of one fine-tuning run (see `build_classification_data`).

  Attributes:
    spec: the dataset's `DatasetSpec`.
    num_labels, label_names: from the spec (label names from TFDS if it has
      them).
    num_train_examples: examples in the train split (one epoch).
    train_dataset: the train `grain.IterDataset`; `iter()` it for another
      iterator.
    train_iter: this host's endless, checkpointable train iterator.
    eval_splits: eval split names, e.g. ['validation'] or ['matched',
      'mismatched'].
    template, truncation: how examples are encoded.
  """

  def __init__(
    self,
    spec: DatasetSpec,
    *,
    label_names,
    num_train_examples: int,
    train_dataset: grain.IterDataset,
    eval_datasets: dict[str, tuple[grain.IterDataset, int, int]],
    template: Template,
    truncation: str,
  ):
    self.spec = spec
    self.num_labels = spec.num_labels
    self.label_names = tuple(label_names)
    self.num_train_examples = num_train_examples
    self.train_dataset = train_dataset
    self.train_iter = iter(train_dataset)
    self._eval = eval_datasets
    self.eval_splits = list(eval_datasets)
    self.template = template
    self.truncation = truncation

  def eval_batches(self, split: str) -> Iterator[dict[str, np.ndarray]]:
    """A fresh one-pass iterator over `split`'s full, padded batches."""
    return iter(self._eval_entry(split)[0])

  def num_eval_batches(self, split: str) -> int:
    """Batches per host of `split` (the same on every host)."""
    return self._eval_entry(split)[1]

  def num_eval_examples(self, split: str) -> int:
    """Real (weight 1) examples of `split` over all hosts."""
    return self._eval_entry(split)[2]

  def _eval_entry(self, split: str):
    if split not in self._eval:
      raise ValueError(
        f"Dataset {self.spec.name!r} has eval splits {self.eval_splits}, not {split!r}."
      )
    return self._eval[split]

  def __repr__(self):
    return (
      f"ClassificationData({self.spec.name}: {self.spec.tfds_name}, "
      f"{self.num_train_examples} train examples, eval {self.eval_splits}, template "
      f"{self.template.style}, truncation {self.truncation})"
    )


def make_encoder(
  spec: DatasetSpec, tokenizer: Tokenizer, config_data, *, seq_len: int, split: str
) -> EncodeExample:
  """How examples of `split` become token ids, as config.data says (template, truncation)."""
  return EncodeExample(
    spec,
    tokenizer,
    seq_len=seq_len,
    truncation=config_data.get("truncation", "auto"),
    head_tokens=config_data.get("head_tokens", 128),
    template=template_for(tokenizer, config_data.get("pair_template", "auto")),
    split=split,
    strip_markup=config_data.get("strip_markup", False),
  )


def one_pass_batches(
  source, encoder: EncodeExample, batching: pipeline.Batching
) -> tuple[grain.IterDataset, int, int]:
  """(this host's batches, batches per host, real examples) of one ordered pass over `source`,
  padded with filler rows (weight 0) to the same number of full batches on every host."""
  b = batching.resolved()
  num_batches = pipeline.eval_batches_per_host(len(source), b.batch_size, b.shard_count)
  size = num_batches * b.batch_size * b.shard_count
  ds = grain.MapDataset.source(_Indexed(source, size)).map(encoder)
  return pipeline.host_batches(ds, b, drop_remainder=False), num_batches, len(source)


def build_classification_data(
  config_data: ml_collections.ConfigDict,
  tokenizer: Tokenizer,
  batching: pipeline.Batching,
  *,
  spec: DatasetSpec | None = None,
) -> ClassificationData:
  """Train iterator and eval batches of `config.data.dataset`.

  Args:
    config_data: `config.data` (see `linformer.data.datasets`).
    tokenizer: the pretrained model's tokenizer.
    batching: tokens per example n (special tokens included), this host's batch size, the
      shuffle seed, the shard and grain workers.
    spec: use this dataset spec instead of `spec_from_config(config_data)`
      (e.g. other splits); the other config.data fields still apply.
  """
  batching = batching.resolved()
  spec = spec or spec_from_config(config_data)
  truncation = resolve_truncation(spec, config_data.get("truncation", "auto"))
  template = template_for(tokenizer, config_data.get("pair_template", "auto"))
  data_dir = config_data.get("data_dir")
  files = config_data.get("files")
  builder = _Builder(spec, data_dir)
  subset_seed = config_data.get("subset_seed", 0)

  def encoder(split):
    return make_encoder(spec, tokenizer, config_data, seq_len=batching.seq_len, split=split)

  train_source = _limit(
    open_split(spec, spec.train_split, data_dir, builder, files),
    config_data.get("train_examples", 0),
    spec,
    subset_seed,
  )
  if len(train_source) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError(
      f"Dataset {spec.name!r}: split {spec.train_split!r} of {spec.tfds_name} is empty."
    )
  # Shuffle and repeat the global example sequence, cut it into per-host
  # batches and give host h every shard_count-th batch (as in mlm.py).
  train = pipeline.host_batches(
    grain.MapDataset.source(_Indexed(train_source))
    .shuffle(seed=batching.seed)
    .repeat()
    .map(encoder(spec.train_split)),
    batching,
    drop_remainder=True,
  )

  eval_datasets = {}
  for name, split in spec.eval_splits:
    source = _limit(
      open_split(spec, split, data_dir, builder, files),
      config_data.get("eval_examples", 0),
      spec,
      subset_seed,
    )
    eval_datasets[name] = one_pass_batches(source, encoder(split), batching)

  label_names = spec.label_names
  if spec.name != FILES and builder.opened:  # TFDS's names, where it has them
    label_feature = builder.get().info.features[spec.label_field]
    label_names = getattr(label_feature, "names", None) or spec.label_names
  data = ClassificationData(
    spec,
    label_names=label_names,
    num_train_examples=len(train_source),
    train_dataset=train,
    eval_datasets=eval_datasets,
    template=template,
    truncation=truncation,
  )
  logging.info("%s", data)
  return data
