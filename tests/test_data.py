"""Tests of linformer.data: corpora, tokenizers, packing, masking, pipeline."""

import gzip
import json
import math
import os

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from linformer import data
from linformer.data import mlm, pipeline, pydocs, text_files
from linformer.data.tokenizer import Tokenizer, train_sentencepiece
from tests.helpers import assert_batches_equal, minilm_tokenizer_json, take

SEQ_LEN = 64


# Fixtures: the pydocs corpus is prepared once per session (~3 s).


@pytest.fixture(scope="session")
def pydocs_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tfds.builder("pydocs", data_dir=data_dir).download_and_prepare(file_format="array_record")
  return data_dir


@pytest.fixture(scope="session")
def pydocs_train(pydocs_dir):
  return data.load_text_source("pydocs", "train", "text", pydocs_dir)


@pytest.fixture(scope="session")
def tokenizer(pydocs_train):
  texts = (pydocs_train[i] for i in range(0, len(pydocs_train), 3))
  return train_sentencepiece(texts, vocab_size=2000, max_sentences=20_000)


@pytest.fixture(scope="session")
def stream(tokenizer, pydocs_train, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("cache") / "train.tokens.npy")
  texts = [pydocs_train[i] for i in range(60)]
  return mlm.tokenize_to_stream(texts, tokenizer, path)


def dataset(stream, tokenizer, train=True, max_predictions=None, mask_prob=0.15, **kwargs):
  batching = pipeline.Batching(
    **{"seq_len": SEQ_LEN, "batch_size": 4, "seed": 0, "shard_index": 0, "shard_count": 1, **kwargs}
  )
  return mlm.make_mlm_dataset(
    stream, tokenizer, batching, train=train, max_predictions=max_predictions, mask_prob=mask_prob
  )


def unmask(batch):
  """The original blocks of a batch: targets put back at their positions."""
  ids = batch["input_ids"].copy()
  for row in range(len(ids)):
    real = batch["mlm_weights"][row] > 0
    ids[row, batch["mlm_positions"][row][real]] = batch["mlm_targets"][row][real]
  return ids


# Masking.


def test_masking_statistics(stream, tokenizer):
  blocks = mlm.PackedBlocks(
    stream, SEQ_LEN, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id
  )
  ds = dataset(stream, tokenizer, train=False, batch_size=16)
  m = mlm.default_max_predictions(SEQ_LEN)
  special = np.asarray(tokenizer.special_ids)
  counts = {"maskable": 0, "predicted": 0, "mask": 0, "random": 0, "kept": 0}
  index = 0
  for batch in ds:
    assert batch["input_ids"].shape == (16, SEQ_LEN)
    assert batch["mlm_positions"].shape == batch["mlm_targets"].shape == (16, m)
    assert batch["input_ids"].dtype == batch["mlm_positions"].dtype == np.int32
    assert batch["mlm_weights"].dtype == np.float32
    for row in range(16):
      block = blocks[index] if index < len(blocks) else None
      index += 1
      if block is None:  # Eval filler: nothing to predict.
        assert batch["mlm_weights"][row].sum() == 0
        continue
      weights = batch["mlm_weights"][row]
      num = int(weights.sum())
      positions = batch["mlm_positions"][row][:num]
      targets = batch["mlm_targets"][row][:num]
      inputs = batch["input_ids"][row]
      maskable = int((~np.isin(block, special)).sum())
      assert num == min(m, max(1, round(0.15 * maskable)))
      assert np.all(weights[num:] == 0) and np.all(weights[:num] == 1)
      assert len(set(positions.tolist())) == num
      assert not np.isin(block[positions], special).any()  # Never special/pad.
      np.testing.assert_array_equal(targets, block[positions])
      np.testing.assert_array_equal(batch["attention_mask"][row], block != tokenizer.pad_id)
      untouched = np.setdiff1d(np.arange(SEQ_LEN), positions)
      np.testing.assert_array_equal(inputs[untouched], block[untouched])
      changed = inputs[positions]
      assert not np.isin(changed[changed != tokenizer.mask_id], special).any()
      counts["maskable"] += maskable
      counts["predicted"] += num
      counts["mask"] += int((changed == tokenizer.mask_id).sum())
      counts["kept"] += int((changed == targets).sum())
      counts["random"] += int(((changed != tokenizer.mask_id) & (changed != targets)).sum())
  n = counts["predicted"]
  assert n > 5000, counts
  # Per example the count is round(15%) of the maskable tokens, so overall
  # the rate is 15% up to rounding (<= 0.5 / 62 per example).
  assert abs(n / counts["maskable"] - 0.15) < 0.01, counts
  # Each prediction is mask/random/kept with p = .8/.1/.1 independently:
  # binomial std sqrt(p(1-p)/n) <= 0.4/sqrt(n) < 0.006 for n > 5000; 4 std.
  # (A random id equal to the original counts as kept: p = 0.1/2000.)
  tolerance = 4 * 0.4 / math.sqrt(n)
  assert abs(counts["mask"] / n - 0.8) < tolerance, counts
  assert abs(counts["random"] / n - 0.1) < tolerance, counts
  assert abs(counts["kept"] / n - 0.1) < tolerance, counts


def test_masks_differ_across_epochs_and_orders_reshuffle(stream, tokenizer):
  blocks = mlm.PackedBlocks(
    stream, SEQ_LEN, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id
  )
  n = len(blocks)
  it = iter(dataset(stream, tokenizer, batch_size=1))
  examples = [next(it) for _ in range(2 * n)]
  originals = [unmask(e)[0].tobytes() for e in examples]
  all_blocks = sorted(blocks[i].tobytes() for i in range(n))
  assert sorted(originals[:n]) == all_blocks  # Epoch 1 is a permutation...
  assert sorted(originals[n:]) == all_blocks  # ... and so is epoch 2,
  assert originals[:n] != originals[n:]  # in another order,
  first = {o: e["mlm_positions"].tobytes() for o, e in zip(originals[:n], examples[:n])}
  second = {o: e["mlm_positions"].tobytes() for o, e in zip(originals[n:], examples[n:])}
  assert sum(first[o] != second[o] for o in first) > n // 2  # new masks.


# Packing.


def test_packing_loses_and_duplicates_nothing(tokenizer, tmp_path):
  docs = [
    "First document.\nWith two lines.",
    "",
    "   \n  ",
    "Bad bytes \ufffd\ufffd decoded.",
    "x" * 10,
    "Last one here.",
  ]
  long_doc = "\n".join(["a long line of text"] * 20_000)  # 400k characters.
  path = str(tmp_path / "train.tokens.npy")
  tokens = mlm.tokenize_to_stream(docs + [long_doc], tokenizer, path)
  assert tokens.dtype == np.uint16  # The vocabulary fits.

  expected = []
  for doc in docs:
    if tokenizer.encode(doc):
      expected += tokenizer.encode(doc) + [tokenizer.eos_id]
  np.testing.assert_array_equal(tokens[: len(expected)], expected)
  long_ids = tokens[len(expected) :]
  assert len(long_ids) > 50_000 and tokenizer.eos_id not in long_ids
  assert (tokens == tokenizer.eos_id).sum() == 4  # Between the 5 non-empty.

  blocks = mlm.PackedBlocks(
    tokens, 50, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id
  )
  inner = []
  for i in range(len(blocks)):
    block = blocks[i]
    length = int((block != tokenizer.pad_id).sum())
    assert block[0] == tokenizer.bos_id and block[length - 1] == tokenizer.eos_id
    assert length == 50 or i == len(blocks) - 1
    inner.append(block[1 : length - 1])
  np.testing.assert_array_equal(np.concatenate(inner), tokens)

  # The cache is reused, not rebuilt.
  mtime = os.path.getmtime(path)
  again = mlm.tokenize_to_stream(["other"], tokenizer, path)
  assert os.path.getmtime(path) == mtime and len(again) == len(tokens)


def test_cache_path_depends_on_source_and_tokenizer(tokenizer, tmp_path):
  other = Tokenizer.load(minilm_tokenizer_json())
  paths = {
    mlm.cache_path(str(tmp_path), "train", tokenizer, "pydocs/1.0.0", 10),
    mlm.cache_path(str(tmp_path), "train", other, "pydocs/1.0.0", 10),
    mlm.cache_path(str(tmp_path), "train", tokenizer, "lm1b/1.1.0", 10),
    mlm.cache_path(str(tmp_path), "validation", tokenizer, "pydocs/1.0.0", 10),
  }
  assert len(paths) == 4


# Determinism, checkpointing and sharding.


def test_same_seed_same_batches_other_seed_differs(stream, tokenizer):
  a = take(iter(dataset(stream, tokenizer, seed=3)), 5)
  b = take(iter(dataset(stream, tokenizer, seed=3)), 5)
  c = take(iter(dataset(stream, tokenizer, seed=4)), 5)
  for x, y in zip(a, b):
    assert_batches_equal(x, y)
  assert any(not np.array_equal(x["input_ids"], z["input_ids"]) for x, z in zip(a, c))


def test_iterator_state_resumes_exactly(stream, tokenizer):
  it = iter(dataset(stream, tokenizer))
  take(it, 3)
  state = it.get_state()
  expected = take(it, 3)
  resumed = iter(dataset(stream, tokenizer))
  resumed.set_state(state)
  for x, y in zip(expected, take(resumed, 3)):
    assert_batches_equal(x, y)


def test_iterator_checkpoints_with_orbax(stream, tokenizer, tmp_path):
  it = iter(dataset(stream, tokenizer))
  take(it, 2)
  with ocp.CheckpointManager(str(tmp_path / "ckpt")) as manager:
    manager.save(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
    expected = next(it)
    resumed = iter(dataset(stream, tokenizer))
    manager.restore(
      2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(resumed))
    )
  assert_batches_equal(expected, next(resumed))


@pytest.mark.parametrize("train", [True, False])
def test_hosts_get_disjoint_examples_covering_an_epoch(tokenizer, train):
  # Distinct tokens make every block distinct (real text repeats itself).
  stream = np.arange(10, 1900, dtype=np.uint16)
  num_blocks = math.ceil(len(stream) / (SEQ_LEN - 2))  # 31: odd on purpose.
  seen = []
  for shard in range(2):
    ds = dataset(stream, tokenizer, batch_size=1, train=train, shard_index=shard, shard_count=2)
    if train:
      batches = take(iter(ds), math.ceil((num_blocks - shard) / 2))
    else:
      batches = list(ds)
      assert len(batches) == math.ceil(num_blocks / 2)  # Equal per host.
    blocks = [
      unmask(b)[0] for b in batches if b["mlm_weights"].sum() > 0
    ]  # Eval fillers predict nothing.
    seen.append({int(b[1]) for b in blocks})  # Block i starts with 10 + 62i.
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == {10 + (SEQ_LEN - 2) * i for i in range(num_blocks)}


def test_eval_batches_are_full_and_padded(stream, tokenizer):
  # 25 blocks over 3 hosts x 7 rows: 2 batches per host, 17 filler rows, whatever
  # length the corpus tokenizes to (the stream is cut to exactly 25 blocks).
  stream = stream[: (SEQ_LEN - 2) * 25]
  assert len(stream) == (SEQ_LEN - 2) * 25
  ds = dataset(stream, tokenizer, train=False, batch_size=7, shard_count=3)
  batches = list(ds)
  assert len(batches) == mlm.eval_batches_per_host(len(stream), SEQ_LEN, 7, 3) == 2
  assert all(b["input_ids"].shape == (7, SEQ_LEN) for b in batches)
  # Fillers are [bos, eos, pad...]: attended (no all-masked rows), no targets.
  last = batches[-1]
  filler = last["mlm_weights"].sum(axis=1) == 0
  assert filler.any()
  assert (last["attention_mask"][filler].sum(axis=1) == 2).all()


def test_unigram_perplexity():
  train = np.array([5, 5, 6, 0, 2], np.uint16)  # 0 and 2 are special.
  evaluation = np.array([5, 6, 2, 1], np.uint16)
  # Add-one over the non-special ids {5, 6, 7}: p5=3/6, p6=2/6, p7=1/6.
  expected = math.exp(-(math.log(3 / 6) + math.log(2 / 6)) / 2)
  got = mlm.unigram_perplexity(train, evaluation, 8, special_ids=[0, 1, 2, 3, 4])
  assert got == pytest.approx(expected)


# Corpora.


def test_pydocs_has_train_and_validation(pydocs_dir, pydocs_train):
  builder = tfds.builder("pydocs", data_dir=pydocs_dir)
  splits = builder.info.splits
  assert splits["train"].num_examples > 300
  assert 0 < splits["validation"].num_examples < splits["train"].num_examples
  valid = builder.as_data_source("validation")
  ids = {valid[i]["id"] for i in range(len(valid))}
  assert all(pydocs.split_of(i.decode()) == "validation" for i in ids)
  assert all(pydocs_train[i].strip() for i in range(len(pydocs_train)))
  assert any(
    "topic:" in builder.as_data_source("train")[i]["id"].decode() for i in range(len(pydocs_train))
  )


def write_corpus(directory):
  os.makedirs(directory)
  with open(os.path.join(directory, "a.txt"), "w") as f:
    f.write("Alpha one.\nAlpha two.\n\n\n   \nBeta.\n\n")
  with gzip.open(os.path.join(directory, "b.txt.gz"), "wt") as f:
    f.write("Gamma from gzip.\n\nDelta from gzip.\n")
  with open(os.path.join(directory, "c.txt"), "wb") as f:
    f.write(b"Latin-1 caf\xe9 \xff bytes.\n")


def read_all(source):
  return sorted(source[i] for i in range(len(source)))


def test_text_files_builder(tmp_path):
  write_corpus(tmp_path / "corpus")
  config = text_files.text_files_config([str(tmp_path / "corpus" / "*.txt*")])
  load = lambda split: data.load_text_source(  # pylint: disable=g-long-lambda
    "text_files", split, "text", str(tmp_path / "tfds"), config=config
  )
  train, valid = load("train"), load("validation")
  assert len(valid) >= 1
  assert sorted(read_all(train) + read_all(valid)) == sorted(
    [
      "Alpha one.\nAlpha two.",
      "Beta.",
      "Gamma from gzip.",
      "Delta from gzip.",
      "Latin-1 caf\ufffd \ufffd bytes.",
    ]
  )

  per_file = text_files.text_files_config(
    [str(tmp_path / "corpus" / "*.txt*")], one_doc_per_file=True
  )
  assert per_file.name != config.name  # Separate data dirs.
  assert (
    text_files.text_files_config([str(tmp_path / "corpus" / "*.txt*")]).name == config.name
  )  # Stable.
  docs = read_all(
    data.load_text_source("text_files", "train", "text", str(tmp_path / "tfds"), config=per_file)
  )
  docs += read_all(
    data.load_text_source(
      "text_files", "validation", "text", str(tmp_path / "tfds"), config=per_file
    )
  )
  assert len(docs) == 3 and "Alpha one.\nAlpha two.\n\n\n   \nBeta." in docs


def test_text_files_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="text_files_train_patterns"):
    text_files.text_files_config([str(tmp_path / "missing" / "*.txt")])
  with pytest.raises(ValueError, match="TextFilesConfig"):
    data.load_text_source("text_files", "train", "text", str(tmp_path))


def write_tables(directory):
  """The same five reviews as JSON lines (gzipped), CSV and TSV, with markup and other fields."""
  os.makedirs(directory)
  reviews = [
    "A fine film.<br /><br />Loved it.",
    "Dull, <i>very</i> dull.",
    "   ",  # blank: skipped
    "Two < three > one, and a<b>bold</b> move.",
    'He said "wow".',
    "Last one.",
  ]
  with gzip.open(os.path.join(directory, "train.jsonl.gz"), "wt") as f:
    for i, text in enumerate(reviews):
      f.write(json.dumps({"id": i, "review": text, "label": i % 2}) + "\n")
  with open(os.path.join(directory, "train.csv"), "w") as f:
    f.write(
      "label,review\n"
      + "".join(f'{i % 2},"{t.replace(chr(34), 2 * chr(34))}"\n' for i, t in enumerate(reviews))
    )
  with open(os.path.join(directory, "train.tsv"), "w") as f:
    f.write("review\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(reviews)))
  return reviews


def load_all(config, data_dir):
  load = lambda split: read_all(
    data.load_text_source("text_files", split, "text", data_dir, config=config)
  )  # noqa: E731
  return sorted(load("train") + load("validation"))


@pytest.mark.parametrize("name", ["train.jsonl.gz", "train.csv", "train.tsv"])
def test_text_files_tables_one_document_a_row(tmp_path, name):
  """A table's `text_field` column, one document a row; strip_markup turns tags into spaces and
  leaves other angle brackets; the other columns are ignored."""
  write_tables(tmp_path / "corpus")
  path = str(tmp_path / "corpus" / name)
  plain = text_files.text_files_config(path, text_field="review")  # one pattern as a string
  as_tuple = text_files.text_files_config((path,), text_field="review")  # or a tuple
  assert (as_tuple.name, as_tuple.train_patterns) == (plain.name, plain.train_patterns)
  assert load_all(plain, str(tmp_path / "tfds")) == sorted(
    [
      "A fine film.<br /><br />Loved it.",
      "Dull, <i>very</i> dull.",
      "Two < three > one, and a<b>bold</b> move.",
      'He said "wow".',
      "Last one.",
    ]
  )
  stripped = text_files.text_files_config(path, text_field="review", strip_markup=True)
  assert stripped.name != plain.name  # separate prepared data
  assert load_all(stripped, str(tmp_path / "tfds")) == sorted(
    [
      "A fine film.  Loved it.",
      "Dull,  very  dull.",
      "Two < three > one, and a bold  move.",
      'He said "wow".',
      "Last one.",
    ]
  )


def test_text_files_split_by_file_name_not_path(tmp_path, monkeypatch):
  """The held-out documents are the same for the same file anywhere, named relatively or not."""
  write_tables(tmp_path / "a")
  write_tables(tmp_path / "b")
  monkeypatch.chdir(tmp_path)

  def validation(pattern):
    config = text_files.text_files_config(pattern, text_field="review", validation_fraction=0.4)
    return read_all(
      data.load_text_source(
        "text_files", "validation", "text", str(tmp_path / "tfds"), config=config
      )
    )

  held_out = validation(str(tmp_path / "a" / "train.tsv"))
  assert 1 <= len(held_out) < 5
  assert validation("b/train.tsv") == held_out


def test_text_files_own_validation_files(tmp_path):
  write_tables(tmp_path / "corpus")
  config = text_files.text_files_config(
    str(tmp_path / "corpus" / "train.csv"),
    validation_patterns=str(tmp_path / "corpus" / "train.tsv"),
    text_field="review",
  )
  valid = data.load_text_source(
    "text_files", "validation", "text", str(tmp_path / "tfds"), config=config
  )
  assert len(valid) == 5 and "Last one." in read_all(valid)


def write(path, content: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(content)
  return str(path)


@pytest.mark.parametrize(
  "name,content,message",
  [
    ("a.jsonl", b'{"text": "one"}\n{"body": "two"}\n', r"a\.jsonl line 2 has no field 'text'"),
    ("a.jsonl.gz", b'{"text": "caf\xe9"}\n', r"a\.jsonl\.gz line 1 is not UTF-8"),
    ("a.jsonl", b"", r"a\.jsonl is empty"),
    ("a.txt", b"\n\n  \n", r"a\.txt is empty \(blank lines only\)"),
    ("a.jsonl", b'{"text": 3}\n', r"line 1: the text field 'text' is a int"),
    ("a.jsonl", b'{"text": " "}\n{"text": ""}\n', r"the column 'text' is blank in every row"),
    ("a.csv", b"body,label\nhello,1\n", r"a\.csv has no column 'text'.*body, label"),
    ("a.jsonl", b'{"text": "x"}\n[1, 2]\n', r"line 2 is a JSON list"),
  ],
  ids=[
    "missing field",
    "not UTF-8",
    "empty",
    "blank txt",
    "not a string",
    "blank column",
    "csv column",
    "not an object",
  ],
)
def test_text_files_bad_files(tmp_path, name, content, message):
  """One ConfigError naming the field, the file and (where it has one) the line."""
  path = write(tmp_path / name, content)
  with pytest.raises(text_files.ConfigError, match=r"text_files_train_patterns: .*" + message):
    text_files.text_files_config([path])


def test_text_files_split_overlap_and_field(tmp_path):
  write_tables(tmp_path / "corpus")
  with pytest.raises(ValueError, match=r"validation_patterns: .*train\.csv is also matched by"):
    text_files.text_files_config(
      str(tmp_path / "corpus" / "*"),
      validation_patterns=str(tmp_path / "corpus" / "train.csv"),
      text_field="review",
    )
  with pytest.raises(ValueError, match=r"config\.data\.text_field=''"):
    text_files.text_files_config(str(tmp_path / "corpus" / "train.csv"), text_field="")
  one = write(tmp_path / "one" / "a.jsonl", b'{"text": "only one document"}\n')
  with pytest.raises(text_files.ConfigError, match=r"found 1 non-empty document.*need at least 2"):
    data.load_text_source(
      "text_files",
      "train",
      "text",
      str(tmp_path / "tfds"),
      config=text_files.text_files_config(one),
    )


def test_build_pretrain_data_from_json_lines(tmp_path):
  """IMDB's format (a gzipped JSON lines file, `text` beside other fields) with strip_markup: the
  packed tokens hold the reviews' words and none of the tags."""
  reviews = [f"Review {i}: a good film.<br /><br />I liked {i} things about it." for i in range(40)]
  with gzip.open(tmp_path / "train.jsonl.gz", "wt") as f:
    f.writelines(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(reviews))
  config = data.default_config()
  config.dataset = "text_files"
  config.text_files_train_patterns = (str(tmp_path / "train.jsonl.gz"),)
  config.text_field, config.strip_markup = "text", True
  config.data_dir = str(tmp_path / "tfds")
  config.tokenizer = minilm_tokenizer_json()
  batching = pipeline.Batching(seq_len=64, batch_size=2, seed=0)
  tok, train_iter, _ = data.build_pretrain_data(config, str(tmp_path / "work"), batching)
  text = tok.decode(next(train_iter)["input_ids"][0].tolist())
  assert "liked" in text and "film" in text
  assert "br" not in text.split() and "<" not in text


def test_named_tfds_dataset_through_the_same_pipeline(tokenizer, tmp_path):
  # TFDS mocks `as_data_source` with random examples of lm1b's real features
  # (MockPolicy.USE_CODE: no metadata, so split names are unknown and TFDS's
  # own split handling applies). Everything else is the real code path.
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    source = data.load_text_source("lm1b", "train", "text", str(tmp_path))
    assert len(source) == 40 and isinstance(source[0], str)
    tokens = mlm.tokenize_to_stream(
      source, tokenizer, mlm.cache_path(str(tmp_path), "train", tokenizer, source.name, len(source))
    )
    with pytest.raises(ValueError, match=r"config\.data\.field='body'"):
      data.load_text_source("lm1b", "train", "body", str(tmp_path))
  batch = next(iter(dataset(tokens, tokenizer, seq_len=16)))
  assert batch["input_ids"].shape == (4, 16)


# Tokenizers.


def test_sentencepiece_save_load_round_trip(tokenizer, tmp_path):
  assert (
    tokenizer.pad_id,
    tokenizer.bos_id,
    tokenizer.eos_id,
    tokenizer.unk_id,
    tokenizer.mask_id,
  ) == (0, 1, 2, 3, 4)
  assert set(tokenizer.special_ids) == {0, 1, 2, 3, 4}
  text = "Return the number of items in a container. <mask> [MASK] \u00e9"
  ids = tokenizer.encode(text)
  assert ids and not set(ids) & {0, 1, 2, 4}  # Text never becomes controls.
  tokenizer.save(str(tmp_path / "tok"))
  loaded = Tokenizer.load(str(tmp_path / "tok"))
  assert loaded.encode(text) == ids
  assert loaded.vocab_size == tokenizer.vocab_size
  assert loaded.encode_pair("a b", "c") == (
    [1] + tokenizer.encode("a b") + [2] + tokenizer.encode("c") + [2]
  )


def test_bert_tokenizer_json(tmp_path):
  bert = Tokenizer.load(minilm_tokenizer_json())
  assert (bert.pad_id, bert.unk_id, bert.bos_id, bert.eos_id, bert.mask_id) == (
    0,
    100,
    101,
    102,
    103,
  )
  assert bert.vocab_size == 30522
  ids = bert.encode("hello world " * 100)  # No padding/truncation to 128.
  assert len(ids) == 200 and 101 not in ids
  bert.save(str(tmp_path / "tok"))
  assert Tokenizer.load(str(tmp_path / "tok")).encode("a test") == (bert.encode("a test"))


def test_tokenizer_json_without_mask_token_is_a_clear_error(tmp_path):
  with open(minilm_tokenizer_json()) as f:
    spec = json.load(f)
  spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "[MASK]"]
  del spec["model"]["vocab"]["[MASK]"]
  path = tmp_path / "tokenizer.json"
  path.write_text(json.dumps(spec))
  with pytest.raises(ValueError, match=r"lacks special tokens.*mask"):
    Tokenizer.load(str(path))


# Bad inputs.


def test_unknown_dataset_split_and_field(pydocs_dir, tmp_path):
  with pytest.raises(ValueError, match=r"config\.data\.dataset='nope'.*pydocs, text_files"):
    data.load_text_source("nope", "train", "text", pydocs_dir)
  with pytest.raises(ValueError, match=r"'test'.*eval_split.*'validation'"):
    data.load_text_source("pydocs", "test", "text", pydocs_dir)
  with pytest.raises(ValueError, match=r"config\.data\.field='body'.*'id'"):
    data.load_text_source("pydocs", "train", "body", pydocs_dir)
  with pytest.raises(FileNotFoundError, match=r"not prepared.*data_dir"):
    data.load_text_source("pydocs", "train", "text", str(tmp_path), prepare=False)
  assert len(data.load_text_source("pydocs", "train[:10]+validation[:5]", "text", pydocs_dir)) == 15


# The entry point.


def test_build_pretrain_data(tmp_path):
  write_corpus(tmp_path / "corpus")
  config = data.default_config()
  config.dataset = "text_files"
  config.text_files_train_patterns = [str(tmp_path / "corpus" / "*")]
  config.data_dir = str(tmp_path / "tfds")
  config.tokenizer = minilm_tokenizer_json()
  workdir = str(tmp_path / "work")
  batching = pipeline.Batching(seq_len=16, batch_size=2, seed=0)
  tok, train_iter, eval_splits = data.build_pretrain_data(config, workdir, batching)
  eval_fn = eval_splits["validation"]
  assert tok.mask_id == 103
  batch = next(train_iter)
  assert batch["input_ids"].shape == (2, 16)
  assert batch["mlm_positions"].shape == (2, 3)  # ceil(0.15 * 16).
  eval_batches = list(eval_fn())
  assert len(eval_batches) == eval_fn.num_batches >= 1
  assert eval_fn.unigram_perplexity > 1
  assert os.listdir(os.path.join(workdir, "tokenizer")) == ["tokenizer.json"]
  train_eval = eval_splits["train"]
  assert len(list(train_eval())) == train_eval.num_batches >= 1

  # Resuming reuses the run's tokenizer and caches, whatever the config says.
  config.tokenizer = ""
  again = data.build_pretrain_data(config, workdir, batching)
  assert again.tokenizer.fingerprint_bytes == tok.fingerprint_bytes
  assert_batches_equal(next(again.train_iter), batch)
  assert len(os.listdir(os.path.join(workdir, "data"))) == 2


def test_global_batch_does_not_depend_on_host_count(stream, tokenizer):
  """Hosts' rows stacked in order equal the one-host batch: same data, same rows."""
  one = take(iter(dataset(stream, tokenizer, batch_size=8, train=True)), 3)
  hosts = [
    take(
      iter(dataset(stream, tokenizer, batch_size=4, train=True, shard_index=h, shard_count=2)), 3
    )
    for h in range(2)
  ]
  for step in range(3):
    for key in one[step]:
      np.testing.assert_array_equal(
        one[step][key], np.concatenate([hosts[0][step][key], hosts[1][step][key]])
      )
