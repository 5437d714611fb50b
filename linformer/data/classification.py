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
from collections.abc import Iterator, Sequence

import grain
import ml_collections
import numpy as np

# tfds imports its dataset modules lazily and, without TensorFlow, never
# imports the legacy ones: this registers `glue` (`imdb_reviews` and `lm1b`
# are registered by name).
import tensorflow_datasets.text  # noqa: F401  (registers glue)

from linformer.config import ConfigError
from linformer.data import pipeline
from linformer.data.datasets import DatasetSpec, spec_from_config
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


def open_split(spec: DatasetSpec, split: str, data_dir: str | None = None, builder=None):
  """The random-access TFDS data source of `spec.tfds_name[split]`.

  Prepares the project's ListOps if needed (any other dataset must be prepared already:
  `pipeline.ensure_prepared`) and checks its features and splits against the spec.
  """
  builder = builder or _builder(spec, data_dir)
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


def check_dataset(spec: DatasetSpec, data_dir: str | None = None) -> None:
  """What `build_classification_data` needs of the dataset, checked before a run writes
  anything: it is known, prepared (ListOps is generated if need be) and has the spec's
  features, train split and eval splits."""
  builder = _builder(spec, data_dir)
  for split in (spec.train_split, *(tfds_split for _, tfds_split in spec.eval_splits)):
    open_split(spec, split, data_dir, builder)


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


def build_classification_data(
  config_data: ml_collections.ConfigDict,
  tokenizer: Tokenizer,
  *,
  seq_len: int,
  per_host_batch_size: int,
  seed: int,
  shard_index: int | None = None,
  shard_count: int | None = None,
  spec: DatasetSpec | None = None,
) -> ClassificationData:
  """Train iterator and eval batches of `config.data.dataset`.

  Args:
    config_data: `config.data` (see `linformer.data.datasets`).
    tokenizer: the pretrained model's tokenizer.
    seq_len: tokens per example n, special tokens included.
    per_host_batch_size: B, examples per batch on this host.
    seed: shuffle seed.
    shard_index, shard_count: this host and the number of hosts; None ->
      jax.process_index(), jax.process_count().
    spec: use this dataset spec instead of `spec_from_config(config_data)`
      (e.g. other splits); the other config.data fields still apply.
  """
  shard_index, shard_count = pipeline.resolve_shards(shard_index, shard_count)
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} not in [0, {shard_count}).")
  spec = spec or spec_from_config(config_data)
  truncation = resolve_truncation(spec, config_data.get("truncation", "auto"))
  head_tokens = config_data.get("head_tokens", 128)
  template = template_for(tokenizer, config_data.get("pair_template", "auto"))
  num_workers = config_data.get("num_workers", 0)
  data_dir = config_data.get("data_dir")
  builder = _builder(spec, data_dir)

  def encoder(split):
    return EncodeExample(
      spec,
      tokenizer,
      seq_len=seq_len,
      truncation=truncation,
      head_tokens=head_tokens,
      template=template,
      split=split,
    )

  def batches(ds, *, train):
    return pipeline.host_batches(
      ds,
      per_host_batch_size,
      drop_remainder=train,
      shard_index=shard_index,
      shard_count=shard_count,
      num_workers=num_workers,
    )

  train_source = open_split(spec, spec.train_split, data_dir, builder)
  if len(train_source) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError(
      f"Dataset {spec.name!r}: split {spec.train_split!r} of {spec.tfds_name} is empty."
    )
  # Shuffle and repeat the global example sequence, cut it into per-host
  # batches and give host h every shard_count-th batch (as in mlm.py).
  train = batches(
    grain.MapDataset.source(_Indexed(train_source))
    .shuffle(seed=seed)
    .repeat()
    .map(encoder(spec.train_split)),
    train=True,
  )

  eval_datasets = {}
  for name, split in spec.eval_splits:
    source = open_split(spec, split, data_dir, builder)
    num_batches = pipeline.eval_batches_per_host(len(source), per_host_batch_size, shard_count)
    size = num_batches * per_host_batch_size * shard_count
    ds = grain.MapDataset.source(_Indexed(source, size)).map(encoder(split))
    eval_datasets[name] = (batches(ds, train=False), num_batches, len(source))

  label_feature = builder.info.features[spec.label_field]
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
