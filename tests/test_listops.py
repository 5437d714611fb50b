"""ListOps generator, TFDS builder and tokenizer.

The expected values come from a parser and an evaluator written here, not
from `linformer.data.listops`, so a bug in the module cannot confirm itself.
"""

import collections
import random

import numpy as np
import pytest
import tensorflow_datasets as tfds

from linformer import data
from linformer.data import listops
from linformer.data.tokenizer import Tokenizer

OPERATORS = {"[MAX", "[MIN", "[MED", "[SM"}


def parse(text):
  """Recursive descent over `expr := '[OP' expr expr+ ']' | digit`.

  Returns the tree as (operator, [children]) or int, and its depth (a digit
  is depth 1, so `[MAX 1 2 ]` is depth 2). AssertionError if malformed.
  """
  tokens = text.split(" ")  # Single spaces only: no stray whitespace.

  def expr(pos):
    assert pos < len(tokens), f"truncated: {text[:60]}"
    token = tokens[pos]
    if len(token) == 1 and token.isdigit():
      return int(token), 1, pos + 1
    assert token in OPERATORS, f"unexpected {token!r} at {pos}"
    children, depth, pos = [], 0, pos + 1
    while pos < len(tokens) and tokens[pos] != "]":
      child, child_depth, pos = expr(pos)
      children.append(child)
      depth = max(depth, child_depth)
    assert pos < len(tokens), f"unclosed {token} in {text[:60]}"
    return (token, children), depth + 1, pos + 1

  tree, depth, end = expr(0)
  assert end == len(tokens), f"trailing tokens after {end}: {text[:60]}"
  return tree, depth


def arg_counts(tree):
  if isinstance(tree, int):
    return []
  return [len(tree[1])] + [n for child in tree[1] for n in arg_counts(child)]


def stack_value(text):
  """LRA's semantics (MED is int(np.median)) with an explicit stack."""
  ops = {
    "[MAX": max,
    "[MIN": min,
    "[MED": lambda a: int(np.median(a)),
    "[SM": lambda a: sum(a) % 10,
  }
  stack = []
  for token in text.split():
    if token == "]":
      args = []
      while not isinstance(stack[-1], str):
        args.append(stack.pop())
      stack.append(ops[stack.pop()](args[::-1]))
    else:
      stack.append(token if token in ops else int(token))
  (value,) = stack
  return value


def test_examples_by_hand():
  for text, value in [
    ("[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]", 5),
    ("[MED 1 4 ]", 2),
    ("[MED 9 1 3 ]", 3),
    ("[SM 9 8 [MIN 7 6 ] ]", 3),
    ("[MIN 0 9 ]", 0),
  ]:
    assert stack_value(text) == value
    assert listops.evaluate(text) == value
  for bad in ("[MAX 1 2", "[MAX ]", "1 2", "[MAX 1 ] ]", "[ADD 1 2 ]"):
    with pytest.raises(ValueError):
      listops.evaluate(bad)


@pytest.mark.parametrize(
  "min_length,max_length,max_depth,max_args,count",
  [
    (20, 100, 10, 10, 1500),  # listops/tiny
    (100, 500, 10, 10, 300),  # listops/small
    (500, 2000, 10, 10, 60),  # listops/default (LRA)
    (10, 60, 3, 4, 300),  # Shallow, narrow trees.
  ],
)
def test_generator_grammar_lengths_and_labels(min_length, max_length, max_depth, max_args, count):
  rng = random.Random(7)
  labels = collections.Counter()
  for _ in range(count):
    text, label = listops.generate(rng, min_length, max_length, max_depth, max_args)
    tree, depth = parse(text)
    assert isinstance(tree, tuple)  # The root is an operator.
    assert min_length <= len(text.split(" ")) <= max_length
    assert depth <= max_depth
    assert all(2 <= n <= max_args for n in arg_counts(tree))
    assert label == stack_value(text)
    labels[label] += 1
  if count >= 1000:
    assert set(labels) == set(range(10))
    assert min(labels.values()) > count / 50  # No class is vanishingly rare.


def test_generator_reaches_the_bounds_and_depth():
  rng = random.Random(3)
  examples = [listops.generate(rng, 20, 100) for _ in range(1000)]
  lengths = [len(text.split()) for text, _ in examples]
  assert min(lengths) < 25 and max(lengths) > 95
  assert max(parse(text)[1] for text, _ in examples) >= 6
  rng = random.Random(3)
  depths = {parse(listops.generate(rng, 4, 200, 3, 3)[0])[1] for _ in range(300)}
  assert depths == {2, 3}


def test_same_seed_same_data_other_seed_or_split_differs():
  def split(seed, name):
    return list(listops.generate_split(50, seed, name, 20, 100))

  assert split(0, "train") == split(0, "train")
  assert split(0, "train") != split(1, "train")
  assert split(0, "train") != split(0, "test")
  assert listops.split_seed(0, "train") == listops.split_seed(0, "train")


def test_impossible_settings_are_clear_errors():
  with pytest.raises(ValueError, match="min_length=500 is unreachable"):
    listops.generate(random.Random(0), 500, 2000, max_depth=2, max_args=10)
  with pytest.raises(ValueError, match="min_length=10, max_length=5"):
    listops.generate(random.Random(0), 10, 5)
  with pytest.raises(ValueError, match="max_depth=1"):
    listops.ListOpsConfig(name="bad", max_depth=1)
  with pytest.raises(ValueError, match="num_validation"):
    listops.ListOpsConfig(name="bad", num_validation=0)


def test_builder_prepares_small_config(tmp_path):
  data_dir = str(tmp_path / "tfds")
  builder = tfds.builder("listops/small", data_dir=data_dir)
  builder.download_and_prepare(file_format="array_record")
  assert builder.info.features["label"].names == [str(d) for d in range(10)]
  sizes = {"train": 2000, "validation": 200, "test": 200}
  texts = {}
  for split, size in sizes.items():
    source = tfds.data_source("listops/small", split=split, data_dir=data_dir)
    assert len(source) == size
    texts[split] = set()
    for i in range(0, size, 7):
      record = source[i]
      text = record["text"].decode()
      assert 100 <= len(text.split()) <= 500
      assert int(record["label"]) == stack_value(text)
      texts[split].add(text)
  assert not texts["train"] & texts["test"]
  assert not texts["train"] & texts["validation"]
  # The project's text loader finds the builder by name and reads it.
  train = data.load_text_source("listops/small", "train", "text", data_dir, prepare=False)
  assert len(train) == 2000 and parse(train[0])


def test_tokenizer_encodes_every_token_and_round_trips(tmp_path):
  tokenizer = listops.listops_tokenizer()
  assert (
    tokenizer.pad_id,
    tokenizer.bos_id,
    tokenizer.eos_id,
    tokenizer.unk_id,
    tokenizer.mask_id,
  ) == (0, 1, 2, 3, 4)
  assert tokenizer.vocab_size == 20
  assert tokenizer.special_ids == (0, 1, 2, 3, 4)
  text, _ = listops.generate(random.Random(0), 100, 500)
  ids = tokenizer.encode(text)
  assert len(ids) == len(text.split())
  assert tokenizer.unk_id not in ids
  assert min(ids) >= 5  # No control ids inside an expression.
  assert tokenizer.decode(ids) == text
  assert tokenizer.encode("[MAX 4 x [ADD ]")[2:4] == [tokenizer.unk_id] * 2
  tokenizer.save(str(tmp_path / "tok"))
  loaded = Tokenizer.load(str(tmp_path / "tok"))
  assert loaded.encode(text) == ids
  assert loaded.fingerprint_bytes == tokenizer.fingerprint_bytes
  assert loaded.encode_pair(text)[0] == loaded.bos_id
