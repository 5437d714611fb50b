"""`listops`: Long Range Arena's ListOps task, generated here (no download).

Each example is a nested expression over the digits 0-9, written as
whitespace-separated tokens like LRA (without LRA's extra parentheses):

    [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]

and its label is the expression's value, one of 10 classes. Operators:

  MAX, MIN: the largest / smallest argument.
  MED: LRA's `int(np.median(args))`: the middle argument of the sorted
    arguments, or with an even count the mean of the two middle ones rounded
    down (`[MED 1 4 ]` is 2, not the lower-middle 1).
  SM: the sum of the arguments modulo 10.

The tree distribution is LRA's (Nangia & Bowman's ListOps): every argument is
a nested operator with probability 0.25 unless at `max_depth` (the root has
depth 1, digits can sit at depth `max_depth`, so operators nest at most
`max_depth - 1` deep), else a uniform digit; an operator is uniform over the
four and takes a uniform 2..`max_args` arguments. Expressions are drawn
until one is `min_length` to `max_length` tokens long (inclusive; LRA's
bounds were exclusive). The root is always an operator (a lone digit is too
short anyway), and a draw is abandoned as soon as it is sure to be too long,
which keeps the default 500-2000 tokens fast without changing the
distribution of accepted expressions.

Configs: `listops/default` (LRA: 96k / 2k / 2k train / validation / test,
500-2000 tokens, depth 10, up to 10 arguments), `listops/small` (2000 / 200 /
200, 100-500 tokens) and `listops/tiny` (200 / 20 / 20, 20-100 tokens) for CPU
runs and tests. Each split is its own seeded stream, so the data are the same
on every machine and Python version. Unlike LRA, examples are not
deduplicated: with 20+ tokens a repeat, within or across splits, is
vanishingly unlikely.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Iterator

import tensorflow_datasets as tfds
import tokenizers

from linformer.data.tokenizer import Tokenizer

OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
CLOSE = "]"
DIGITS = tuple(str(d) for d in range(10))
VOCABULARY = DIGITS + OPERATORS + (CLOSE,)
NUM_CLASSES = 10
OPERATOR_P = 0.25  # LRA's VALUE_P: chance that an argument is an operator.

# The specials `Tokenizer` requires, first so that pad is id 0.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")

SPLITS = ("train", "validation", "test")
_MAX_ATTEMPTS = 1_000_000  # Consecutive rejected draws before giving up.


def apply(operator: str, args: list[int]) -> int:
  """The value of `operator` (one of OPERATORS) on digit arguments."""
  if operator == "[MAX":
    return max(args)
  if operator == "[MIN":
    return min(args)
  if operator == "[MED":  # int(np.median(args)), without numpy's overhead.
    ordered = sorted(args)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) // 2
  if operator == "[SM":
    return sum(args) % 10
  raise ValueError(f"Unknown ListOps operator {operator!r}; expected one of {OPERATORS}.")


def evaluate(text: str) -> int:
  """The value of a ListOps expression; ValueError if it is malformed."""
  stack = [[]]  # Argument lists of the open operators; [0] holds the result.
  operators = []
  for token in text.split():
    if token in OPERATORS:
      operators.append(token)
      stack.append([])
    elif token == CLOSE:
      if not operators or not stack[-1]:
        raise ValueError(f"Unbalanced or empty operator in {text[:80]!r}.")
      args = stack.pop()
      stack[-1].append(apply(operators.pop(), args))
    elif token in DIGITS:
      stack[-1].append(int(token))
    else:
      raise ValueError(f"Unknown ListOps token {token!r} in {text[:80]!r}.")
  if operators or len(stack[0]) != 1:
    raise ValueError(f"Not one complete expression: {text[:80]!r}.")
  return stack[0][0]


def longest_possible(max_depth: int, max_args: int) -> int:
  """Tokens of the longest expression the tree parameters allow."""
  length = 2 + max_args  # An operator at depth max_depth - 1: all digits.
  for _ in range(max_depth - 2):
    length = 2 + max_args * length
  return length


def _check(min_length: int, max_length: int, max_depth: int, max_args: int) -> None:
  if max_depth < 2:
    raise ValueError(
      f"ListOps max_depth={max_depth}: must be >= 2 (the root "
      "operator is at depth 1, its digits at depth 2)."
    )
  if max_args < 2:
    raise ValueError(f"ListOps max_args={max_args}: must be >= 2.")
  if not 4 <= min_length <= max_length:
    raise ValueError(
      f"ListOps min_length={min_length}, max_length={max_length}: need "
      "4 <= min_length <= max_length (the shortest expression, e.g. "
      "`[MAX 1 2 ]`, has 4 tokens)."
    )
  longest = longest_possible(max_depth, max_args)
  if min_length > longest:
    raise ValueError(
      f"ListOps min_length={min_length} is unreachable: max_depth="
      f"{max_depth} and max_args={max_args} allow at most {longest} tokens;"
      " raise max_depth or max_args, or lower min_length."
    )


class _TooLong(Exception):
  """A draw that is already sure to exceed max_length."""


def _draw(
  rng: random.Random, max_length: int, max_depth: int, max_args: int
) -> tuple[list[str], int]:
  """One expression from LRA's distribution, abandoned once too long."""
  tokens = []
  uniform = rng.random  # Only rng.random: fast and stable across versions.
  arg_span = max_args - 1

  def operator(depth: int) -> int:
    op = OPERATORS[int(uniform() * 4)]
    tokens.append(op)
    nested = depth + 1 < max_depth  # May an argument be an operator?
    args = []
    for _ in range(2 + int(uniform() * arg_span)):
      if nested and uniform() < OPERATOR_P:
        args.append(operator(depth + 1))
      else:
        digit = int(uniform() * 10)
        tokens.append(DIGITS[digit])
        args.append(digit)
      # Every open operator (`depth` of them) still needs its `]`.
      if len(tokens) + depth > max_length:
        raise _TooLong
    tokens.append(CLOSE)
    return apply(op, args)

  return tokens, operator(1)


def generate(
  rng: random.Random,
  min_length: int = 500,
  max_length: int = 2000,
  max_depth: int = 10,
  max_args: int = 10,
) -> tuple[str, int]:
  """(expression, label): one example with min_length..max_length tokens.

  Deterministic for the state of `rng` (e.g. `random.Random(seed)`).
  """
  _check(min_length, max_length, max_depth, max_args)
  for _ in range(_MAX_ATTEMPTS):
    try:
      tokens, value = _draw(rng, max_length, max_depth, max_args)
    except _TooLong:
      continue
    if len(tokens) >= min_length:
      return " ".join(tokens), value
  raise RuntimeError(
    f"ListOps: no expression of {min_length}-{max_length} tokens in "
    f"{_MAX_ATTEMPTS} draws with max_depth={max_depth}, max_args="
    f"{max_args}; widen the length bounds or raise max_depth/max_args."
  )


def split_seed(seed: int, split: str) -> int:
  """A stable, independent seed for each split of a dataset seed."""
  digest = hashlib.sha256(f"listops:{seed}:{split}".encode()).digest()
  return int.from_bytes(digest[:8], "little")


def generate_split(
  num_examples: int,
  seed: int,
  split: str,
  min_length: int = 500,
  max_length: int = 2000,
  max_depth: int = 10,
  max_args: int = 10,
) -> Iterator[tuple[str, int]]:
  """`num_examples` (expression, label) pairs of `split`, same for a seed."""
  rng = random.Random(split_seed(seed, split))
  for _ in range(num_examples):
    yield generate(rng, min_length, max_length, max_depth, max_args)


# The TFDS builder.


@dataclasses.dataclass(eq=False)
class ListOpsConfig(tfds.core.BuilderConfig):
  """Split sizes, length bounds, tree shape and seed of a ListOps dataset.

  A config's data live under its name in `data_dir`: give a new name to any
  config with other values.
  """

  num_train: int = 96_000
  num_validation: int = 2_000
  num_test: int = 2_000
  min_length: int = 500
  max_length: int = 2000
  max_depth: int = 10
  max_args: int = 10
  seed: int = 0

  def __post_init__(self):
    _check(self.min_length, self.max_length, self.max_depth, self.max_args)
    sizes = (self.num_train, self.num_validation, self.num_test)
    if min(sizes) < 1:
      raise ValueError(
        f"ListOpsConfig {self.name!r}: num_train, "
        f"num_validation, num_test={sizes} must all be >= 1 "
        "(TFDS cannot write an empty split)."
      )


DEFAULT = ListOpsConfig(
  name="default", description="LRA ListOps: 96k/2k/2k examples of 500-2000 tokens."
)
SMALL = ListOpsConfig(
  name="small",
  num_train=2000,
  num_validation=200,
  num_test=200,
  min_length=100,
  max_length=500,
  description="2000/200/200 examples of 100-500 tokens, for CPU runs.",
)
TINY = ListOpsConfig(
  name="tiny",
  num_train=200,
  num_validation=20,
  num_test=20,
  min_length=20,
  max_length=100,
  description="200/20/20 examples of 20-100 tokens, for smoke tests.",
)
SHORT = ListOpsConfig(
  name="short",
  num_train=4000,
  num_validation=500,
  num_test=500,
  min_length=10,
  max_length=60,
  max_depth=4,
  max_args=5,
  description="4000/500/500 shallow examples of 10-60 tokens: learnable in "
  "minutes on a CPU (the test that the pipeline learns).",
)


class Listops(tfds.core.GeneratorBasedBuilder):
  """ListOps expressions and their values (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [DEFAULT, SMALL, TINY, SHORT]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=list(DIGITS))}
      ),
      supervised_keys=("text", "label"),
      homepage="https://github.com/google-research/long-range-arena",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated, nothing to download.
    config = self.builder_config
    sizes = {
      "train": config.num_train,
      "validation": config.num_validation,
      "test": config.num_test,
    }
    return {split: self._generate_examples(split, sizes[split]) for split in SPLITS}

  def _generate_examples(self, split, num_examples):
    config = self.builder_config
    examples = generate_split(
      num_examples,
      config.seed,
      split,
      config.min_length,
      config.max_length,
      config.max_depth,
      config.max_args,
    )
    for index, (text, label) in enumerate(examples):
      yield index, {"text": text, "label": label}


# The tokenizer.


def listops_tokenizer() -> Tokenizer:
  """A word-level `Tokenizer` over the fixed ListOps vocabulary.

  Ids: <pad>=0, <s>=1, </s>=2, <unk>=3, <mask>=4, then the digits 0-9
  (5-14), [MAX [MIN [MED [SM (15-18) and ] (19). Tokens are split on
  whitespace only, so `[MAX` stays one token; any other word is <unk>
  (the literal special tokens, which generated text never holds, map to
  their own ids). Saved and loaded like any
  tokenizer.json (`Tokenizer.save` / `Tokenizer.load`).
  """
  vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + VOCABULARY)}
  hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  hf.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  hf.add_special_tokens(list(SPECIAL_TOKENS))  # Ids kept: already in vocab.
  return Tokenizer(tokenizer_json=hf.to_str(), source="listops_tokenizer()")
