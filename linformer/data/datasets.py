"""The fine-tuning datasets (GLUE, IMDB, ListOps): what each reads and how it is scored.

`get_dataset_spec(name)` gives a dataset's `DatasetSpec`; `spec_from_config(config.data)` the
one a fine-tuning run uses (also `dataset=files`, defined by config.data). Any split may come
from a local file (`config.data.files`, `linformer.data.files`) instead of TFDS.
`linformer.data.classification` reads them as grain pipelines.

Datasets (`DATASETS`; `config.data.dataset`):

  sst2, qnli, qqp, cola, mrpc, stsb, mnli, rte, wnli: TFDS `glue/{name}`,
    evaluated on `validation` (MNLI: `validation_matched` and
    `validation_mismatched`, reported as `matched` and `mismatched`). GLUE's
    test labels are hidden (-1) and never used. stsb is a regression
    (num_labels=1, float labels in [0, 5]).
  imdb: TFDS `imdb_reviews` ('text', 'label'). It has no validation split,
    so it is evaluated, and its best checkpoint picked, on `test` (as in the
    Linformer paper's setup). For a clean protocol hold out part of train:
    `build_classification_data(..., spec=dataclasses.replace(
    get_dataset_spec('imdb'), train_split='train[:90%]', eval_splits=(
    ('validation', 'train[90%:]'), ('test', 'test')),
    main_metric='validation/accuracy'))`. Long reviews are truncated
    'head_tail' by default.
  listops: TFDS `listops/{config.data.listops_config}` (the project's builder
    in `linformer.data.listops`, 10 classes), evaluated on `validation`
    (picks the checkpoint) and `test` (the LRA number).

Labels are checked as examples are read: a class id outside [0, num_labels)
(including TFDS's -1 of unlabeled test splits) or a regression score outside
the dataset's range is a ValueError naming the dataset, split, example and
value.

`config.data` fields (`default_config()`):

  dataset: the dataset name, one of `DATASETS` ('sst2').
  task: deprecated spelling of `dataset` (None); when set it is used, with a
    warning.
  data_dir: TFDS data dir; None -> $TFDS_DATA_DIR or ~/tensorflow_datasets.
    GLUE and IMDB must be prepared there beforehand (a run never downloads:
    offline that would hang on retries): on a machine with network run
    `tfds build glue/sst2 --file_format=array_record --data_dir=DIR` and copy
    DIR here. ListOps is generated on first use.
  train_split: None -> the dataset's ('train'); TFDS slicing such as
    'train[:10%]' works.
  truncation: 'auto', 'head', 'tail' or 'head_tail' (see
    `linformer.data.encoding`).
  head_tokens: tokens kept from the start by 'head_tail' (128).
  pair_template: 'auto' (from the tokenizer), 'bert' or 'roberta'.
  length_buckets: 'auto' (powers of two from 16 up to n), 'none' (every
    batch padded to n) or lengths such as '64,128': each batch (training,
    evaluation, prediction) is cut to the smallest length holding its longest
    example. Results are unchanged (padding is exact); only the work shrinks.
  strip_markup: markup tags such as IMDB's `<br />` become spaces before
    tokenizing (False); as the pretraining run's config.data.strip_markup.
  listops_config: builder config of the listops dataset: 'default' (LRA
    sizes) or 'small' (see linformer/data/listops.py for others).
  num_workers: grain worker processes (0: threads in this process).
  files: split name -> a file or glob ('' : read the split from TFDS); see
    `linformer.data.files` for the formats (TSV, CSV, JSON lines, .gz).
  train_examples, eval_examples: 0 (all), or a fixed subset of that many
    examples of the train split / of each eval split, drawn with
    `subset_seed` and balanced over the classes (equal counts where the
    classes allow), the same for every run that gives the same numbers.
  subset_seed: the seed of those subsets (0), independent of config.seed.

`dataset=files` is a dataset of your own, read from files only:

  text_fields: one or two column names (('text',)), the texts to classify.
  label_field: the label column ('label').
  label_names: the class names, index = class id (a file's label may be a
    name or an id); () -> the sorted distinct labels of the train file,
    printed at start and stored in the run's config.json.
  num_labels: None (from label_names), or 1 for a regression on float labels.
  It is evaluated on `files.validation`, else `files.test`; its metrics are
  accuracy (and F1 of class 1 for two classes), or Pearson and Spearman.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from absl import logging

from linformer.config import ConfigError
from linformer.data.files import SPLITS


def default_config() -> ml_collections.ConfigDict:
  """`config.data` for fine-tuning; fields are documented above."""
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict(
    {
      "dataset": "sst2",
      "task": placeholder(str),  # Deprecated: `dataset`.
      "data_dir": placeholder(str),
      "train_split": placeholder(str),
      "truncation": "auto",
      "head_tokens": 128,
      "pair_template": "auto",
      "strip_markup": False,
      "length_buckets": "auto",
      "listops_config": "default",
      "num_workers": 0,
      "files": {split: "" for split in SPLITS},
      "train_examples": 0,
      "eval_examples": 0,
      "subset_seed": 0,
      # dataset=files only.
      "text_fields": ("text",),
      "label_field": "label",
      "label_names": (),
      "num_labels": placeholder(int),
    }
  )


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a fine-tuning dataset reads and how it is scored.

  Attributes:
    name: registry name ('sst2').
    tfds_name: TFDS dataset, with config ('glue/sst2').
    text_fields: one feature (single text) or two (pair, in template order).
    label_field: the label feature.
    num_labels: classes; 1 means regression (float labels).
    label_names: class names (index = class id); () for regression.
    train_split: TFDS split trained on.
    eval_splits: (report name, TFDS split) pairs, e.g. (('matched',
      'validation_matched'), ('mismatched', 'validation_mismatched')).
    metrics: names in `linformer.finetune_metrics.METRICS`, computed on each split.
    main_metric: '{eval split name}/{metric}', higher is better; picks the
      best checkpoint.
    default_truncation: what config.data.truncation='auto' means.
    label_range: [low, high] of regression labels.
  """

  name: str
  tfds_name: str
  text_fields: tuple[str, ...]
  label_field: str
  num_labels: int
  label_names: tuple[str, ...]
  train_split: str
  eval_splits: tuple[tuple[str, str], ...]
  metrics: tuple[str, ...]
  main_metric: str
  default_truncation: str = "head"
  label_range: tuple[float, float] | None = None

  @property
  def is_regression(self) -> bool:
    return self.num_labels == 1

  @property
  def is_pair(self) -> bool:
    return len(self.text_fields) == 2

  @property
  def eval_split_names(self) -> list[str]:
    return [name for name, _ in self.eval_splits]

  def tfds_split(self, eval_name: str) -> str:
    for name, split in self.eval_splits:
      if name == eval_name:
        return split
    raise ValueError(
      f"Dataset {self.name!r} has no eval split {eval_name!r}; its eval splits "
      f"are {self.eval_split_names}."
    )


def _glue(
  name,
  text_fields,
  label_names,
  *,
  metrics=("accuracy",),
  main=None,
  eval_splits=(("validation", "validation"),),
  label_range=None,
):
  return DatasetSpec(
    name=name,
    tfds_name=f"glue/{name}",
    text_fields=tuple(text_fields),
    label_field="label",
    num_labels=len(label_names) or 1,
    label_names=tuple(label_names),
    train_split="train",
    eval_splits=tuple(eval_splits),
    metrics=tuple(metrics),
    main_metric=f"{eval_splits[0][0]}/{main or metrics[0]}",
    label_range=label_range,
  )


_BINARY_F1 = ("accuracy", "f1", "accuracy_and_f1")

DATASETS: dict[str, DatasetSpec] = {
  spec.name: spec
  for spec in [
    # The Linformer paper's downstream tasks.
    _glue("sst2", ["sentence"], ["negative", "positive"]),
    _glue("qnli", ["question", "sentence"], ["entailment", "not_entailment"]),
    _glue(
      "qqp",
      ["question1", "question2"],
      ["not_duplicate", "duplicate"],
      metrics=_BINARY_F1,
      main="accuracy_and_f1",
    ),
    DatasetSpec(
      name="imdb",
      tfds_name="imdb_reviews",
      text_fields=("text",),
      label_field="label",
      num_labels=2,
      label_names=("neg", "pos"),
      train_split="train",
      eval_splits=(("test", "test"),),
      metrics=("accuracy",),
      main_metric="test/accuracy",
      default_truncation="head_tail",
    ),
    # The rest of GLUE (not 'ax': test only).
    _glue(
      "cola",
      ["sentence"],
      ["unacceptable", "acceptable"],
      metrics=("matthews_corrcoef", "accuracy"),
    ),
    _glue(
      "mrpc",
      ["sentence1", "sentence2"],
      ["not_equivalent", "equivalent"],
      metrics=_BINARY_F1,
      main="accuracy_and_f1",
    ),
    _glue(
      "stsb",
      ["sentence1", "sentence2"],
      [],
      metrics=("pearson", "spearman", "pearson_and_spearman"),
      main="pearson_and_spearman",
      label_range=(0.0, 5.0),
    ),
    _glue(
      "mnli",
      ["premise", "hypothesis"],
      ["entailment", "neutral", "contradiction"],
      eval_splits=(("matched", "validation_matched"), ("mismatched", "validation_mismatched")),
    ),
    _glue("rte", ["sentence1", "sentence2"], ["entailment", "not_entailment"]),
    _glue("wnli", ["sentence1", "sentence2"], ["not_entailment", "entailment"]),
    # Long Range Arena; tfds_name's config comes from config.data.
    DatasetSpec(
      name="listops",
      tfds_name="listops/default",
      text_fields=("text",),
      label_field="label",
      num_labels=10,
      label_names=tuple(str(i) for i in range(10)),
      train_split="train",
      eval_splits=(("validation", "validation"), ("test", "test")),
      metrics=("accuracy",),
      main_metric="validation/accuracy",
    ),
  ]
}


FILES = "files"  # a dataset of your own, read from config.data.files


def check_dataset_name(dataset: str) -> None:
  if dataset not in DATASETS and dataset != FILES:
    raise ConfigError(
      f"config.data.dataset={dataset!r}: unknown dataset. Known datasets: "
      f"{', '.join(sorted(DATASETS))}, or {FILES!r} (your own, from config.data.files)."
    )


def get_dataset_spec(dataset: str, *, listops_config: str = "default") -> DatasetSpec:
  """The spec of a registered `dataset`; ValueError listing the known datasets if unknown."""
  check_dataset_name(dataset)
  if dataset == FILES:
    raise ConfigError(
      "config.data.dataset='files' is defined by config.data (text_fields, label_field, "
      "label_names, files): use spec_from_config."
    )
  spec = DATASETS[dataset]
  if dataset == "listops":
    spec = dataclasses.replace(spec, tfds_name=f"listops/{listops_config}")
  return spec


def dataset_name(config_data) -> str:
  """`config.data.dataset`, or the deprecated `config.data.task` if that is set (warned)."""
  old = config_data.get("task")
  if old:
    logging.warning("config.data.task is deprecated: use config.data.dataset=%s instead.", old)
    return old
  return config_data.dataset


def files_spec(d) -> DatasetSpec:
  """The spec of `dataset=files` from config.data (num_labels 0 until the labels are known)."""
  names = tuple(d.get("label_names") or ())
  num_labels = d.get("num_labels") or len(names)
  files = d.get("files") or {}
  split = "validation" if files.get("validation") else "test" if files.get("test") else "validation"
  if num_labels == 1:
    metrics, main, names = (
      ("pearson", "spearman", "pearson_and_spearman"),
      "pearson_and_spearman",
      (),
    )
  else:
    metrics = ("accuracy", "f1") if num_labels == 2 else ("accuracy",)
    main = "accuracy"
  return DatasetSpec(
    name=FILES,
    tfds_name="",
    text_fields=tuple(d.get("text_fields") or ()),
    label_field=d.get("label_field") or "",
    num_labels=num_labels,
    label_names=names,
    train_split="train",
    eval_splits=((split, split),),
    metrics=metrics,
    main_metric=f"{split}/{main}",
  )


def spec_from_config(config_data) -> DatasetSpec:
  """The spec of `config.data.dataset`, with `config.data` overrides applied."""
  if dataset_name(config_data) == FILES:
    spec = files_spec(config_data)
    train_split = config_data.get("train_split")
    return dataclasses.replace(spec, train_split=train_split) if train_split else spec
  spec = get_dataset_spec(
    dataset_name(config_data), listops_config=config_data.get("listops_config", "default")
  )
  train_split = config_data.get("train_split")
  if train_split:
    spec = dataclasses.replace(spec, train_split=train_split)
  return spec
