"""Fine-tuning examples as fixed-length token ids: templates, truncation, encoding.

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
    'auto' is the dataset's `default_truncation`: 'head_tail' for imdb and
    'head' for every other dataset.

An example (`EncodeExample`) is int32 [n] 'input_ids', 'attention_mask' and
'token_type_ids', 'labels' (an int32 class id, float32 for regression) and
'weights' (float32: 1 for real examples, 0 for eval filler rows, which are
`[bos] [eos]` or the empty pair with label 0). Labels are checked against the
dataset's spec (see `linformer.data.datasets`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from linformer.config import ConfigError
from linformer.data.datasets import DatasetSpec
from linformer.data.pipeline import decode_text, strip_markup
from linformer.data.tokenizer import Tokenizer

TRUNCATIONS = ("head", "tail", "head_tail")
PAIR_TEMPLATES = ("auto", "bert", "roberta")


# Templates.


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
    return sum(len(v) for kind, v, _ in pieces if kind == "special")


def bert_template(cls_id: int, sep_id: int) -> Template:
  return Template(
    single=(("special", (cls_id,), 0), ("text", 0, 0), ("special", (sep_id,), 0)),
    pair=(
      ("special", (cls_id,), 0),
      ("text", 0, 0),
      ("special", (sep_id,), 0),
      ("text", 1, 1),
      ("special", (sep_id,), 1),
    ),
    style="bert",
  )


def roberta_template(bos_id: int, eos_id: int) -> Template:
  return Template(
    single=(("special", (bos_id,), 0), ("text", 0, 0), ("special", (eos_id,), 0)),
    pair=(
      ("special", (bos_id,), 0),
      ("text", 0, 0),
      ("special", (eos_id, eos_id), 0),
      ("text", 1, 0),
      ("special", (eos_id,), 0),
    ),
    style="roberta",
  )


def _from_post_processor(processor: dict | None) -> Template | None:
  """The template of a tokenizer.json post-processor, if it defines one."""
  if not processor:
    return None
  kind = processor.get("type")
  if kind == "Sequence":
    for inner in processor.get("processors", []):
      template = _from_post_processor(inner)
      if template is not None:
        return template
    return None
  if kind == "BertProcessing":
    return bert_template(processor["cls"][1], processor["sep"][1])
  if kind == "RobertaProcessing":
    return roberta_template(processor["cls"][1], processor["sep"][1])
  if kind == "TemplateProcessing":
    specials = {name: tuple(token["ids"]) for name, token in processor["special_tokens"].items()}

    def pieces(items):
      out = []
      for item in items:
        if "SpecialToken" in item:
          token = item["SpecialToken"]
          out.append(("special", specials[token["id"]], token["type_id"]))
        else:
          sequence = item["Sequence"]
          out.append(("text", 0 if sequence["id"] == "A" else 1, sequence["type_id"]))
      return tuple(out)

    return Template(
      single=pieces(processor["single"]), pair=pieces(processor["pair"]), style="TemplateProcessing"
    )
  return None


def template_for(tokenizer: Tokenizer, pair_template: str = "auto") -> Template:
  """The tokenizer's single/pair template (see the module docstring)."""
  if pair_template not in PAIR_TEMPLATES:
    raise ValueError(f"config.data.pair_template={pair_template!r}: use one of {PAIR_TEMPLATES}.")
  if pair_template == "bert":
    return bert_template(tokenizer.bos_id, tokenizer.eos_id)
  if pair_template == "roberta":
    return roberta_template(tokenizer.bos_id, tokenizer.eos_id)
  tokenizer_json = tokenizer.__getstate__().get("tokenizer_json")
  if tokenizer_json is not None:
    template = _from_post_processor(json.loads(tokenizer_json).get("post_processor"))
    if template is not None:
      return template
  return roberta_template(tokenizer.bos_id, tokenizer.eos_id)


# Truncation.


def pair_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
  """Tokens kept of each side, longest-first (see the module docstring)."""
  if len_a + len_b <= budget:
    return len_a, len_b
  keep_a = min(len_a, max(budget // 2, budget - len_b))
  return keep_a, min(len_b, budget - keep_a)


def truncate(ids: Sequence[int], keep: int, strategy: str, head_tokens: int = 128) -> list[int]:
  """`keep` tokens of `ids` by 'head', 'tail' or 'head_tail'."""
  ids = list(ids)
  if len(ids) <= keep:
    return ids
  if strategy == "head":
    return ids[:keep]
  if strategy == "tail":
    return ids[len(ids) - keep :]
  if strategy == "head_tail":
    head = min(head_tokens, keep)
    return ids[:head] + ids[len(ids) - (keep - head) :]
  raise ValueError(f"config.data.truncation={strategy!r}: use one of {TRUNCATIONS} or 'auto'.")


def resolve_truncation(spec: DatasetSpec, truncation: str) -> str:
  strategy = spec.default_truncation if truncation == "auto" else truncation
  if strategy not in TRUNCATIONS:
    raise ValueError(f"config.data.truncation={truncation!r}: use one of {TRUNCATIONS} or 'auto'.")
  return strategy


# Encoding.


def encode_ids(
  template: Template,
  ids_a: Sequence[int],
  ids_b: Sequence[int] | None,
  *,
  seq_len: int,
  pad_id: int,
  truncation: str = "head",
  head_tokens: int = 128,
) -> dict[str, np.ndarray]:
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
    raise ValueError(
      f"seq_len={seq_len} leaves no room for text after the "
      f"{template.num_special(pair)} special tokens."
    )
  if pair:
    keep_a, keep_b = pair_lengths(len(ids_a), len(ids_b), budget)
    texts = (
      truncate(ids_a, keep_a, truncation, head_tokens),
      truncate(ids_b, keep_b, truncation, head_tokens),
    )
  else:
    texts = (truncate(ids_a, budget, truncation, head_tokens),)
  ids, types = [], []
  for kind, value, type_id in template.pair if pair else template.single:
    piece = value if kind == "special" else texts[value]
    ids.extend(piece)
    types.extend([type_id] * len(piece))
  length = len(ids)
  input_ids = np.full([seq_len], pad_id, np.int32)
  input_ids[:length] = ids
  token_type_ids = np.zeros([seq_len], np.int32)
  token_type_ids[:length] = types
  attention_mask = np.zeros([seq_len], np.int32)
  attention_mask[:length] = 1
  return {
    "input_ids": input_ids,
    "attention_mask": attention_mask,
    "token_type_ids": token_type_ids,
  }


class EncodeExample(grain.transforms.Map):
  """(index, TFDS record) -> one example; (index, None) -> a filler row."""

  def __init__(
    self,
    spec: DatasetSpec,
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    truncation: str,
    head_tokens: int,
    template: Template,
    split: str,
    strip_markup: bool = False,
  ):
    self.spec = spec
    self.tokenizer = tokenizer
    self.seq_len = seq_len
    self.truncation = resolve_truncation(spec, truncation)
    self.head_tokens = head_tokens
    self.template = template
    self.split = split
    self.strip_markup = strip_markup

  def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    if self.strip_markup:
      texts = [strip_markup(t) for t in texts]
    ids = [self.tokenizer.encode(t) for t in texts]
    return encode_ids(
      self.template,
      ids[0],
      ids[1] if len(ids) > 1 else None,
      seq_len=self.seq_len,
      pad_id=self.tokenizer.pad_id,
      truncation=self.truncation,
      head_tokens=self.head_tokens,
    )

  def label(self, value, index: int):
    spec = self.spec
    where = f"Dataset {spec.name!r} ({spec.tfds_name}, split {self.split!r}, example {index})"
    if spec.is_regression:
      label = float(np.asarray(value))
      low, high = spec.label_range or (-math.inf, math.inf)
      if not (math.isfinite(label) and low <= label <= high):
        raise ValueError(
          f"{where}: regression label {label} is outside [{low}, {high}] (TFDS "
          "marks unlabeled test examples -1: train and evaluate on labeled "
          "splits)."
        )
      return np.float32(label)
    label = int(np.asarray(value))
    if not 0 <= label < spec.num_labels:
      hint = (
        " (-1: TFDS's unlabeled test examples; train and evaluate on labeled splits)"
        if label == -1
        else ""
      )
      raise ValueError(f"{where}: label {label} is out of range [0, {spec.num_labels}){hint}.")
    return np.int32(label)

  def map(self, element: tuple[int, Any]) -> dict[str, np.ndarray]:
    index, record = element
    label_dtype = np.float32 if self.spec.is_regression else np.int32
    if record is None:  # Eval padding.
      example = self.encode([""] * len(self.spec.text_fields))
      example["labels"] = label_dtype(0)
      example["weights"] = np.float32(0)
      return example
    example = self.encode([decode_text(record[f]) for f in self.spec.text_fields])
    example["labels"] = self.label(record[self.spec.label_field], index)
    example["weights"] = np.float32(1)
    return example


def encode_for_prediction(
  spec: DatasetSpec,
  tokenizer: Tokenizer,
  text: str,
  text_pair: str | None = None,
  *,
  seq_len: int,
  truncation: str = "auto",
  head_tokens: int = 128,
  pair_template: str = "auto",
  strip_markup: bool = False,
) -> dict[str, np.ndarray]:
  """A one-example batch of `text` (and `text_pair`), as the pipeline makes.

  `labels` is a 0 placeholder and `weights` is 1. Pair datasets need
  `text_pair`; single-text datasets refuse it.
  """
  if spec.is_pair and text_pair is None:
    raise ValueError(
      f"Dataset {spec.name!r} classifies text pairs "
      f"({' + '.join(spec.text_fields)}): give text_pair (--text_pair)."
    )
  if not spec.is_pair and text_pair is not None:
    raise ValueError(
      f"Dataset {spec.name!r} classifies single texts "
      f"({spec.text_fields[0]}): do not give text_pair."
    )
  encoder = EncodeExample(
    spec,
    tokenizer,
    seq_len=seq_len,
    truncation=truncation,
    head_tokens=head_tokens,
    template=template_for(tokenizer, pair_template),
    split="prediction",
    strip_markup=strip_markup,
  )
  example = encoder.encode([text] if text_pair is None else [text, text_pair])
  example["labels"] = (np.float32 if spec.is_regression else np.int32)(0)
  example["weights"] = np.float32(1)
  return {k: np.asarray(v)[None] for k, v in example.items()}


# Length buckets: a batch is cut to the smallest bucket holding its longest example. Padding is
# exact for every attention kind (a sequence padded to any length gives the same outputs on its
# real tokens), so this changes no result, only the work: SST-2 sentences average ~25 tokens.
AUTO_MIN_BUCKET = 16


def length_buckets(setting, n: int, multiple: int = 1) -> tuple[int, ...]:
  """The bucket lengths of `config.data.length_buckets` for a model of length n: 'auto' (powers
  of two from 16, and n), 'none' (n only: every batch padded to n) or lengths such as '64,128'
  (n is always added). Lengths are rounded up to a `multiple` (LSH's chunk length)."""
  field = "config.data.length_buckets"
  text = ",".join(map(str, setting)) if isinstance(setting, (list, tuple)) else str(setting)
  text = text.strip().lower()
  if text == "auto":
    lengths = [AUTO_MIN_BUCKET << i for i in range(max(n.bit_length(), 1))]
  elif text == "none":
    lengths = []
  else:
    try:
      lengths = [int(v) for v in text.strip("()[]").split(",") if v.strip()]
    except ValueError:
      lengths = None
    if not lengths or any(v < 1 for v in lengths):
      raise ConfigError(
        f"{field}={setting!r}: give 'auto', 'none' or lengths such as '64,128' (each >= 1)."
      )
    if max(lengths) > n:
      raise ConfigError(
        f"{field}={setting!r}: {max(lengths)} is longer than the model's n = "
        f"config.model.max_len = {n}. Fix: lengths up to {n}."
      )
  rounded = {-(-v // multiple) * multiple for v in lengths if v < n}
  return tuple(sorted(v for v in rounded if v < n)) + (n,)


def bucket_width(attention_mask: np.ndarray, buckets: tuple[int, ...]) -> int:
  """The smallest bucket holding every row's real tokens (padding is on the right)."""
  longest = int(np.asarray(attention_mask).sum(axis=1).max(initial=1))
  return next(b for b in buckets if b >= longest)


def cut_to(batch: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
  """The batch with its (batch, n) token arrays cut to `width` columns; the rest unchanged."""
  n = np.asarray(batch["attention_mask"]).shape[1]
  return {
    k: v[:, :width] if np.ndim(v) == 2 and np.shape(v)[1] == n else v for k, v in batch.items()
  }
