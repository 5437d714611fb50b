"""Fine-tuning data: GLUE, IMDB and ListOps as grain pipelines of fixed shape.

`build_classification_data(config.data, tokenizer, seq_len=...,
per_host_batch_size=..., seed=...)` is the one call fine-tuning makes. It
reads the task's TFDS dataset as random-access data sources
(`tfds.data_source`, ArrayRecord, no TensorFlow), tokenizes each example
lazily in the grain map and returns a checkpointable train iterator and
one-pass eval batches per eval split.

Tasks (`TASKS`; `config.data.task`):

  sst2, qnli, qqp, cola, mrpc, stsb, mnli, rte, wnli: TFDS `glue/{task}`,
    evaluated on `validation` (MNLI: `validation_matched` and
    `validation_mismatched`, reported as `matched` and `mismatched`). GLUE's
    test labels are hidden (-1) and never used. stsb is a regression
    (num_labels=1, float labels in [0, 5]).
  imdb: TFDS `imdb_reviews` ('text', 'label'). It has no validation split,
    so it is evaluated, and its best checkpoint picked, on `test` (as in the
    Linformer paper's setup). For a clean protocol hold out part of train:
    `build_classification_data(..., spec=dataclasses.replace(
    get_task_spec('imdb'), train_split='train[:90%]', eval_splits=(
    ('validation', 'train[90%:]'), ('test', 'test')),
    main_metric='validation/accuracy'))`. Long reviews are truncated
    'head_tail' by default.
  listops: TFDS `listops/{config.data.listops_config}` (the project's builder
    in `linformer.data.listops`, 10 classes), evaluated on `validation`
    (picks the checkpoint) and `test` (the LRA number).

Encoding (fixed length n = seq_len, right-padded with pad_id):

  single text: the tokenizer's single template, `[bos] a [eos]`.
  text pair: the tokenizer's pair template. A tokenizer.json's post-processor
    decides (BERT TemplateProcessing/BertProcessing: `[CLS] a [SEP] b [SEP]`
    with token_type_ids 0...0 1...1; RobertaProcessing: `<s> a </s></s> b
    </s>`, all type 0). SentencePiece models (no post-processor) use the
    RoBERTa layout `<s> a </s></s> b </s>` with type 0 (the project's models
    are RoBERTa-like, type_vocab_size=0). Note `Tokenizer.encode_pair` uses a
    single separator and no token types; it is not used here.
    config.data.pair_template forces 'bert' or 'roberta'.
  truncation of pairs: longest-first, like `Tokenizer.encode_pair`: the
    longer side loses one token at a time (a first on ties) until both fit,
    so a short side is always kept whole. Closed form: with budget
    L = n - (special tokens), a keeps min(|a|, max(L // 2, L - |b|)) and b
    keeps min(|b|, L - kept a).
  which tokens a side keeps when it must lose some (config.data.truncation):
    'head': its first k tokens; 'tail': its last k; 'head_tail': its first
    min(head_tokens, k) and last k - min(head_tokens, k) tokens (Sun et al.
    2019, "How to fine-tune BERT for text classification?", found head 128 +
    tail 382 best on IMDB at n = 512; with n - 2 <= head_tokens it is 'head').
    'auto' is 'head_tail' for imdb and 'head' for every other task.

Batches (dicts of numpy arrays, B = per-host batch size):

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

Labels are checked as examples are read: a class id outside [0, num_labels)
(including TFDS's -1 of unlabeled test splits) or a regression score outside
the task's range is a ValueError naming the task, split, example and value.

`config.data` fields (`default_config()`):

  task: the task name, one of `TASKS` ('sst2').
  data_dir: TFDS data dir; None -> $TFDS_DATA_DIR or ~/tensorflow_datasets.
    Datasets not prepared there are prepared (downloaded) on first use; on a
    machine without network prepare them elsewhere with
    `tfds build glue/sst2 --file_format=array_record --data_dir=...`.
  train_split: None -> the task's ('train'); TFDS slicing such as
    'train[:10%]' works.
  truncation: 'auto', 'head', 'tail' or 'head_tail' (see above).
  head_tokens: tokens kept from the start by 'head_tail' (128).
  pair_template: 'auto' (from the tokenizer), 'bert' or 'roberta'.
  listops_config: builder config of the listops task: 'default' (LRA
    sizes) or 'small' (see linformer/data/listops.py for others).
  num_workers: grain worker processes (0: threads in this process).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
# tfds imports its dataset modules lazily and, without TensorFlow, never
# imports the legacy ones: this registers `glue` (`imdb_reviews` and `lm1b`
# are registered by name).
import tensorflow_datasets.text  # pylint: disable=unused-import

from linformer.data import mlm
from linformer.data.tokenizer import Tokenizer

TRUNCATIONS = ('head', 'tail', 'head_tail')
PAIR_TEMPLATES = ('auto', 'bert', 'roberta')
_multiprocess = mlm._multiprocess  # pylint: disable=protected-access


def default_config() -> ml_collections.ConfigDict:
  """`config.data` for fine-tuning; fields are documented above."""
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict({
      'task': 'sst2',
      'data_dir': placeholder(str),
      'train_split': placeholder(str),
      'truncation': 'auto',
      'head_tokens': 128,
      'pair_template': 'auto',
      'listops_config': 'default',
      'num_workers': 0,
  })


# Tasks.


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What a fine-tuning task reads and how it is scored.

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
    metrics: names in `linformer.metrics.METRICS`, computed on each split.
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
  default_truncation: str = 'head'
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
    raise ValueError(f'Task {self.name!r} has no eval split {eval_name!r}; its'
                     f' eval splits are {self.eval_split_names}.')


def _glue(name, text_fields, label_names, *, metrics=('accuracy',),
          main=None, eval_splits=(('validation', 'validation'),),
          label_range=None):
  return TaskSpec(
      name=name, tfds_name=f'glue/{name}', text_fields=tuple(text_fields),
      label_field='label', num_labels=len(label_names) or 1,
      label_names=tuple(label_names), train_split='train',
      eval_splits=tuple(eval_splits), metrics=tuple(metrics),
      main_metric=f'{eval_splits[0][0]}/{main or metrics[0]}',
      label_range=label_range)


_BINARY_F1 = ('accuracy', 'f1', 'accuracy_and_f1')

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in [
    # The Linformer paper's downstream tasks.
    _glue('sst2', ['sentence'], ['negative', 'positive']),
    _glue('qnli', ['question', 'sentence'], ['entailment', 'not_entailment']),
    _glue('qqp', ['question1', 'question2'], ['not_duplicate', 'duplicate'],
          metrics=_BINARY_F1, main='accuracy_and_f1'),
    TaskSpec(name='imdb', tfds_name='imdb_reviews', text_fields=('text',),
             label_field='label', num_labels=2, label_names=('neg', 'pos'),
             train_split='train', eval_splits=(('test', 'test'),),
             metrics=('accuracy',), main_metric='test/accuracy',
             default_truncation='head_tail'),
    # The rest of GLUE (not 'ax': test only).
    _glue('cola', ['sentence'], ['unacceptable', 'acceptable'],
          metrics=('matthews_corrcoef', 'accuracy')),
    _glue('mrpc', ['sentence1', 'sentence2'], ['not_equivalent', 'equivalent'],
          metrics=_BINARY_F1, main='accuracy_and_f1'),
    _glue('stsb', ['sentence1', 'sentence2'], [],
          metrics=('pearson', 'spearman', 'pearson_and_spearman'),
          main='pearson_and_spearman', label_range=(0.0, 5.0)),
    _glue('mnli', ['premise', 'hypothesis'],
          ['entailment', 'neutral', 'contradiction'],
          eval_splits=(('matched', 'validation_matched'),
                       ('mismatched', 'validation_mismatched'))),
    _glue('rte', ['sentence1', 'sentence2'], ['entailment', 'not_entailment']),
    _glue('wnli', ['sentence1', 'sentence2'], ['not_entailment', 'entailment']),
    # Long Range Arena; tfds_name's config comes from config.data.
    TaskSpec(name='listops', tfds_name='listops/default', text_fields=('text',),
             label_field='label', num_labels=10,
             label_names=tuple(str(i) for i in range(10)),
             train_split='train',
             eval_splits=(('validation', 'validation'), ('test', 'test')),
             metrics=('accuracy',), main_metric='validation/accuracy'),
]}


def get_task_spec(task: str, *, listops_config: str = 'default') -> TaskSpec:
  """The spec of `task`; ValueError listing the known tasks if unknown."""
  if task not in TASKS:
    raise ValueError(f'config.data.task={task!r}: unknown task. Known tasks: '
                     f'{", ".join(sorted(TASKS))}.')
  spec = TASKS[task]
  if task == 'listops':
    spec = dataclasses.replace(spec, tfds_name=f'listops/{listops_config}')
  return spec


def spec_from_config(config_data) -> TaskSpec:
  """The spec of `config.data.task`, with `config.data` overrides applied."""
  spec = get_task_spec(config_data.task,
                       listops_config=config_data.get('listops_config',
                                                      'default'))
  train_split = config_data.get('train_split')
  if train_split:
    spec = dataclasses.replace(spec, train_split=train_split)
  return spec


# Templates and truncation.


@dataclasses.dataclass(frozen=True)
class Template:
  """Where special tokens and texts go, and their token type ids.

  `single` and `pair` are tuples of pieces: ('special', ids, type_id) or
  ('text', 0 | 1, type_id) for the first/second text.
  """
  single: tuple[tuple[str, Any, int], ...]
  pair: tuple[tuple[str, Any, int], ...]
  style: str  # For messages: 'bert', 'roberta', 'TemplateProcessing'.

  def num_special(self, pair: bool) -> int:
    pieces = self.pair if pair else self.single
    return sum(len(v) for kind, v, _ in pieces if kind == 'special')


def bert_template(cls_id: int, sep_id: int) -> Template:
  return Template(
      single=(('special', (cls_id,), 0), ('text', 0, 0),
              ('special', (sep_id,), 0)),
      pair=(('special', (cls_id,), 0), ('text', 0, 0), ('special', (sep_id,), 0),
            ('text', 1, 1), ('special', (sep_id,), 1)),
      style='bert')


def roberta_template(bos_id: int, eos_id: int) -> Template:
  return Template(
      single=(('special', (bos_id,), 0), ('text', 0, 0),
              ('special', (eos_id,), 0)),
      pair=(('special', (bos_id,), 0), ('text', 0, 0),
            ('special', (eos_id, eos_id), 0), ('text', 1, 0),
            ('special', (eos_id,), 0)),
      style='roberta')


def _from_post_processor(processor: dict | None) -> Template | None:
  """The template of a tokenizer.json post-processor, if it defines one."""
  if not processor:
    return None
  kind = processor.get('type')
  if kind == 'Sequence':
    for inner in processor.get('processors', []):
      template = _from_post_processor(inner)
      if template is not None:
        return template
    return None
  if kind == 'BertProcessing':
    return bert_template(processor['cls'][1], processor['sep'][1])
  if kind == 'RobertaProcessing':
    return roberta_template(processor['cls'][1], processor['sep'][1])
  if kind == 'TemplateProcessing':
    specials = {name: tuple(token['ids'])
                for name, token in processor['special_tokens'].items()}

    def pieces(items):
      out = []
      for item in items:
        if 'SpecialToken' in item:
          token = item['SpecialToken']
          out.append(('special', specials[token['id']], token['type_id']))
        else:
          sequence = item['Sequence']
          out.append(('text', 0 if sequence['id'] == 'A' else 1,
                      sequence['type_id']))
      return tuple(out)

    return Template(single=pieces(processor['single']),
                    pair=pieces(processor['pair']), style='TemplateProcessing')
  return None


def template_for(tokenizer: Tokenizer, pair_template: str = 'auto') -> Template:
  """The tokenizer's single/pair template (see the module docstring)."""
  if pair_template not in PAIR_TEMPLATES:
    raise ValueError(f'config.data.pair_template={pair_template!r}: use one of '
                     f'{PAIR_TEMPLATES}.')
  if pair_template == 'bert':
    return bert_template(tokenizer.bos_id, tokenizer.eos_id)
  if pair_template == 'roberta':
    return roberta_template(tokenizer.bos_id, tokenizer.eos_id)
  tokenizer_json = tokenizer.__getstate__().get('tokenizer_json')
  if tokenizer_json is not None:
    template = _from_post_processor(
        json.loads(tokenizer_json).get('post_processor'))
    if template is not None:
      return template
  return roberta_template(tokenizer.bos_id, tokenizer.eos_id)


def pair_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
  """Tokens kept of each side, longest-first (see the module docstring)."""
  if len_a + len_b <= budget:
    return len_a, len_b
  keep_a = min(len_a, max(budget // 2, budget - len_b))
  return keep_a, min(len_b, budget - keep_a)


def truncate(ids: Sequence[int], keep: int, strategy: str,
             head_tokens: int = 128) -> list[int]:
  """`keep` tokens of `ids` by 'head', 'tail' or 'head_tail'."""
  ids = list(ids)
  if len(ids) <= keep:
    return ids
  if strategy == 'head':
    return ids[:keep]
  if strategy == 'tail':
    return ids[len(ids) - keep:]
  if strategy == 'head_tail':
    head = min(head_tokens, keep)
    return ids[:head] + ids[len(ids) - (keep - head):]
  raise ValueError(f'config.data.truncation={strategy!r}: use one of '
                   f"{TRUNCATIONS} or 'auto'.")


def resolve_truncation(spec: TaskSpec, truncation: str) -> str:
  strategy = spec.default_truncation if truncation == 'auto' else truncation
  if strategy not in TRUNCATIONS:
    raise ValueError(f'config.data.truncation={truncation!r}: use one of '
                     f"{TRUNCATIONS} or 'auto'.")
  return strategy


def encode_ids(template: Template, ids_a: Sequence[int],
               ids_b: Sequence[int] | None, *, seq_len: int, pad_id: int,
               truncation: str = 'head',
               head_tokens: int = 128) -> dict[str, np.ndarray]:
  """Token ids of one or two texts -> input_ids, attention_mask, token types.

  Args:
    template: where special tokens go (`template_for`).
    ids_a, ids_b: the texts' ids without special tokens; ids_b None for a
      single text.
    seq_len: n, the output length.
    pad_id: fills the rest.
    truncation: 'head', 'tail' or 'head_tail' ('auto' resolved already).
    head_tokens: see 'head_tail'.

  Returns:
    int32 [n] arrays 'input_ids', 'attention_mask', 'token_type_ids'.
  """
  pair = ids_b is not None
  budget = seq_len - template.num_special(pair)
  if budget < (2 if pair else 1):
    raise ValueError(f'seq_len={seq_len} leaves no room for text after the '
                     f'{template.num_special(pair)} special tokens.')
  if pair:
    keep_a, keep_b = pair_lengths(len(ids_a), len(ids_b), budget)
    texts = (truncate(ids_a, keep_a, truncation, head_tokens),
             truncate(ids_b, keep_b, truncation, head_tokens))
  else:
    texts = (truncate(ids_a, budget, truncation, head_tokens),)
  ids, types = [], []
  for kind, value, type_id in (template.pair if pair else template.single):
    piece = value if kind == 'special' else texts[value]
    ids.extend(piece)
    types.extend([type_id] * len(piece))
  length = len(ids)
  input_ids = np.full([seq_len], pad_id, np.int32)
  input_ids[:length] = ids
  token_type_ids = np.zeros([seq_len], np.int32)
  token_type_ids[:length] = types
  attention_mask = np.zeros([seq_len], np.int32)
  attention_mask[:length] = 1
  return {'input_ids': input_ids, 'attention_mask': attention_mask,
          'token_type_ids': token_type_ids}


def _text(value) -> str:
  if isinstance(value, bytes):
    return value.decode('utf-8', errors='replace')
  if isinstance(value, np.ndarray) and value.dtype.kind in 'SO':
    return _text(value.item())
  return str(value)


class EncodeExample(grain.transforms.Map):
  """(index, TFDS record) -> one example; (index, None) -> a filler row."""

  def __init__(self, spec: TaskSpec, tokenizer: Tokenizer, *, seq_len: int,
               truncation: str, head_tokens: int, template: Template,
               split: str):
    self.spec = spec
    self.tokenizer = tokenizer
    self.seq_len = seq_len
    self.truncation = resolve_truncation(spec, truncation)
    self.head_tokens = head_tokens
    self.template = template
    self.split = split

  def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    ids = [self.tokenizer.encode(t) for t in texts]
    return encode_ids(self.template, ids[0], ids[1] if len(ids) > 1 else None,
                      seq_len=self.seq_len, pad_id=self.tokenizer.pad_id,
                      truncation=self.truncation, head_tokens=self.head_tokens)

  def label(self, value, index: int):
    spec = self.spec
    where = (f'Task {spec.name!r} ({spec.tfds_name}, split {self.split!r}, '
             f'example {index})')
    if spec.is_regression:
      label = float(np.asarray(value))
      low, high = spec.label_range or (-math.inf, math.inf)
      if not (math.isfinite(label) and low <= label <= high):
        raise ValueError(f'{where}: regression label {label} is outside '
                         f'[{low}, {high}] (TFDS marks unlabeled test examples'
                         ' -1: train and evaluate on labeled splits).')
      return np.float32(label)
    label = int(np.asarray(value))
    if not 0 <= label < spec.num_labels:
      hint = (' (-1: TFDS\'s unlabeled test examples; train and evaluate on '
              'labeled splits)' if label == -1 else '')
      raise ValueError(f'{where}: label {label} is out of range '
                       f'[0, {spec.num_labels}){hint}.')
    return np.int32(label)

  def map(self, element: tuple[int, Any]) -> dict[str, np.ndarray]:
    index, record = element
    label_dtype = np.float32 if self.spec.is_regression else np.int32
    if record is None:  # Eval padding.
      example = self.encode([''] * len(self.spec.text_fields))
      example['labels'] = label_dtype(0)
      example['weights'] = np.float32(0)
      return example
    example = self.encode([_text(record[f]) for f in self.spec.text_fields])
    example['labels'] = self.label(record[self.spec.label_field], index)
    example['weights'] = np.float32(1)
    return example


def encode_for_prediction(spec: TaskSpec, tokenizer: Tokenizer, text: str,
                          text_pair: str | None = None, *, seq_len: int,
                          truncation: str = 'auto', head_tokens: int = 128,
                          pair_template: str = 'auto') -> dict[str, np.ndarray]:
  """A one-example batch of `text` (and `text_pair`), as the pipeline makes.

  `labels` is a 0 placeholder and `weights` is 1. Pair tasks need
  `text_pair`; single-text tasks refuse it.
  """
  if spec.is_pair and text_pair is None:
    raise ValueError(f'Task {spec.name!r} classifies text pairs '
                     f'({" + ".join(spec.text_fields)}): give text_pair '
                     '(--text_pair).')
  if not spec.is_pair and text_pair is not None:
    raise ValueError(f'Task {spec.name!r} classifies single texts '
                     f'({spec.text_fields[0]}): do not give text_pair.')
  encoder = EncodeExample(spec, tokenizer, seq_len=seq_len,
                          truncation=truncation, head_tokens=head_tokens,
                          template=template_for(tokenizer, pair_template),
                          split='prediction')
  example = encoder.encode([text] if text_pair is None else [text, text_pair])
  example['labels'] = (np.float32 if spec.is_regression else np.int32)(0)
  example['weights'] = np.float32(1)
  return {k: np.asarray(v)[None] for k, v in example.items()}


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


def _builder(spec: TaskSpec, data_dir: str | None):
  dataset = spec.tfds_name.split('/')[0]
  if dataset == 'listops':
    try:  # Registers the project's builder.
      importlib.import_module('linformer.data.listops')
    except ModuleNotFoundError as e:
      if e.name != 'linformer.data.listops':
        raise
      raise ValueError('config.data.task=\'listops\' needs the ListOps TFDS '
                       'builder in linformer/data/listops.py.') from e
  try:
    return tfds.builder(spec.tfds_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f'config.data.task={spec.name!r}: TFDS dataset '
                     f'{spec.tfds_name!r} is not registered ({e}).') from e


def open_split(spec: TaskSpec, split: str, data_dir: str | None = None,
               builder=None):
  """The random-access TFDS data source of `spec.tfds_name[split]`.

  Prepares the dataset if needed and checks its features against the spec.
  """
  builder = builder or _builder(spec, data_dir)
  if not builder.is_prepared():
    try:
      builder.download_and_prepare(file_format='array_record')
    except Exception as e:  # pylint: disable=broad-except
      raise RuntimeError(
          f'config.data.task={spec.name!r}: cannot prepare {spec.tfds_name!r} '
          f'under config.data.data_dir={data_dir!r} ({type(e).__name__}: {e})'
          f'. Prepare it where it can be downloaded: `tfds build '
          f'{spec.tfds_name} --file_format=array_record --data_dir=...`.'
      ) from e
  features = builder.info.features
  missing = [f for f in (*spec.text_fields, spec.label_field)
             if f not in features]
  if missing:
    raise ValueError(f'Task {spec.name!r}: {spec.tfds_name} has no features '
                     f'{missing}; its features are {sorted(features.keys())}.')
  label = features[spec.label_field]
  num_classes = getattr(label, 'num_classes', None)
  if spec.is_regression != (num_classes is None) or (
      num_classes is not None and num_classes != spec.num_labels):
    raise ValueError(f'Task {spec.name!r} expects {spec.num_labels} labels '
                     f'but {spec.tfds_name} has label feature {label}.')
  known = list(builder.info.splits.keys())
  asked = [part.split('[')[0].strip() for part in split.split('+')]
  # Splits are unknown only for mocked builders (tests).
  if known and not set(asked) <= set(known):
    raise ValueError(f'Task {spec.name!r}: split {split!r} is not in '
                     f'{spec.tfds_name}, whose splits are {known}.')
  return builder.as_data_source(split=split)


# The pipeline.


def eval_batches_per_host(num_examples: int, batch_size: int,
                          shard_count: int) -> int:
  """Full eval batches per host (the last ones padded with fillers)."""
  return max(1, math.ceil(num_examples / (shard_count * batch_size)))


class ClassificationData:
  """The data of one fine-tuning run (see `build_classification_data`).

  Attributes:
    spec: the task's `TaskSpec`.
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

  def __init__(self, spec: TaskSpec, *, label_names, num_train_examples: int,
               train_dataset: grain.IterDataset,
               eval_datasets: dict[str, tuple[grain.IterDataset, int, int]],
               template: Template, truncation: str):
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
      raise ValueError(f'Task {self.spec.name!r} has eval splits '
                       f'{self.eval_splits}, not {split!r}.')
    return self._eval[split]

  def __repr__(self):
    return (f'ClassificationData({self.spec.name}: {self.spec.tfds_name}, '
            f'{self.num_train_examples} train examples, eval '
            f'{self.eval_splits}, template {self.template.style}, truncation '
            f'{self.truncation})')


def build_classification_data(
    config_data: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    per_host_batch_size: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    spec: TaskSpec | None = None,
) -> ClassificationData:
  """Train iterator and eval batches of `config.data.task`.

  Args:
    config_data: `config.data` (see the module docstring).
    tokenizer: the pretrained model's tokenizer.
    seq_len: tokens per example n, special tokens included.
    per_host_batch_size: B, examples per batch on this host.
    seed: shuffle seed.
    shard_index, shard_count: this host and the number of hosts; None ->
      jax.process_index(), jax.process_count().
    spec: use this task spec instead of `spec_from_config(config_data)`
      (e.g. other splits); the other config.data fields still apply.
  """
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index, shard_count = jax.process_index(), jax.process_count()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index={shard_index} not in [0, {shard_count}).')
  spec = spec or spec_from_config(config_data)
  truncation = resolve_truncation(spec, config_data.get('truncation', 'auto'))
  head_tokens = config_data.get('head_tokens', 128)
  template = template_for(tokenizer, config_data.get('pair_template', 'auto'))
  num_workers = config_data.get('num_workers', 0)
  data_dir = config_data.get('data_dir')
  builder = _builder(spec, data_dir)

  def encoder(split):
    return EncodeExample(spec, tokenizer, seq_len=seq_len,
                         truncation=truncation, head_tokens=head_tokens,
                         template=template, split=split)

  train_source = open_split(spec, spec.train_split, data_dir, builder)
  if len(train_source) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError(f'Task {spec.name!r}: split {spec.train_split!r} of '
                     f'{spec.tfds_name} is empty.')
  # Shuffle and repeat the global example sequence, cut it into per-host
  # batches and give host h every shard_count-th batch (as in mlm.py).
  train = (grain.MapDataset.source(_Indexed(train_source))
           .shuffle(seed=seed).repeat()
           .map(encoder(spec.train_split))
           .batch(per_host_batch_size, drop_remainder=True))
  train = train[shard_index::shard_count]
  train = _multiprocess(train.to_iter_dataset(), num_workers)

  eval_datasets = {}
  for name, split in spec.eval_splits:
    source = open_split(spec, split, data_dir, builder)
    num_batches = eval_batches_per_host(len(source), per_host_batch_size,
                                        shard_count)
    size = num_batches * per_host_batch_size * shard_count
    ds = (grain.MapDataset.source(_Indexed(source, size))
          .map(encoder(split))
          .batch(per_host_batch_size))
    ds = ds[shard_index::shard_count]
    eval_datasets[name] = (
        _multiprocess(ds.to_iter_dataset(), num_workers), num_batches,
        len(source))

  label_feature = builder.info.features[spec.label_field]
  label_names = getattr(label_feature, 'names', None) or spec.label_names
  data = ClassificationData(
      spec, label_names=label_names, num_train_examples=len(train_source),
      train_dataset=train, eval_datasets=eval_datasets, template=template,
      truncation=truncation)
  logging.info('%s', data)
  return data
