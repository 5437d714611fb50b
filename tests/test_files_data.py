"""Fine-tuning splits from local files (linformer.data.files, config.data.files): each format
read exactly, GLUE's TSV as sst2 with no TFDS, dataset=files with named and discovered labels,
a file split beside a TFDS mock split, regression, slices and balanced subsets; prediction for a
file end to end (eval.py --predict_file). The files are written by the tests; the real SST-2 and
IMDB in ../shared/data are read only by the last test, which skips without them."""

import csv
import gzip
import importlib
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from linformer.config import ConfigError
from linformer.data import classification, datasets, encoding, pipeline
from linformer.data import files as files_lib
from linformer.data.tokenizer import train_sentencepiece

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
CONFIG = os.path.join(ROOT, "tests", "cli_config.py")

# Texts that trip naive readers: quotes, commas, unicode, a backslash, leading spaces.
PAIRS = [
  ('he said "no" , twice', "a, b and c", 0),
  ("naïve café — ünïcode ✓", "'single' quotes", 1),
  ("back\\slash", "  leading spaces", 2),
  ("plain", "text", 1),
]


def write(path, rows, fmt, header=("premise", "hypothesis", "label")):
  """`rows` (tuples in header order) as a TSV, CSV or JSON-lines file, gzipped for *.gz."""
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wt", encoding="utf-8", newline="") as f:
    if fmt == "jsonl":
      for row in rows:
        f.write(json.dumps(dict(zip(header, row))) + "\n")
      return str(path)
    writer = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
    if fmt == "tsv":
      f.write("\t".join(header) + "\n")
      for row in rows:
        f.write("\t".join(map(str, row)) + "\n")
    else:
      writer.writerow(header)
      writer.writerows(rows)
  return str(path)


def files_data(**overrides):
  cfg = datasets.default_config()
  cfg.dataset = "files"
  cfg.text_fields = ("premise", "hypothesis")
  for key, value in overrides.items():
    if key.startswith("files."):
      cfg.files[key[len("files.") :]] = value
    else:
      cfg[key] = value
  return cfg


WORDS = "the a film good bad plain text number quotes twice unicode cafe back slash".split()


def distinct_texts(n):
  """n texts that the test tokenizer encodes to n different id sequences."""
  return [f"{WORDS[i % len(WORDS)]} {WORDS[i // len(WORDS)]}" for i in range(n)]


@pytest.fixture(scope="module")
def sp_tokenizer():
  words = WORDS
  rng = np.random.default_rng(0)
  return train_sentencepiece(
    [" ".join(rng.choice(words, 10)) for _ in range(300)], vocab_size=90, num_threads=1
  )


@pytest.mark.parametrize("name", ["d.tsv", "d.csv", "d.jsonl", "d.json", "d.tsv.gz", "d.csv.gz"])
def test_each_format_is_read_exactly(name, tmp_path):
  fmt = files_lib.file_format(name, "f")
  path = write(tmp_path / name, PAIRS, fmt)
  cfg = files_data(**{"files.train": path, "label_names": ("a", "b", "c")})
  spec = datasets.spec_from_config(cfg)
  source = classification.open_split(spec, "train", files=cfg.files)
  assert len(source) == len(PAIRS)
  for record, (premise, hypothesis, label) in zip(source, PAIRS):
    assert record == {"premise": premise, "hypothesis": hypothesis, "label": label}


def test_csv_keeps_quoted_commas_and_newlines(tmp_path):
  rows = [("one, two", "line\nbreak", 0), ("x", 'say "hi"', 1)]
  path = write(tmp_path / "q.csv", rows, "csv")
  cfg = files_data(**{"files.train": path, "label_names": ("n", "p")})
  source = classification.open_split(datasets.spec_from_config(cfg), "train", files=cfg.files)
  assert [tuple(r.values()) for r in source] == rows


def test_glue_tsv_is_sst2_without_tfds(sp_tokenizer, tmp_path):
  """GLUE's SST-2 layout (sentence<TAB>label) read as dataset=sst2: TFDS is never opened (glue
  is not prepared here), train batches hold the files' examples, eval covers every row once."""
  texts = distinct_texts(15)
  train = [(t, i % 2) for i, t in enumerate(texts[:10])]
  dev = [(t, 1 - i % 2) for i, t in enumerate(texts[10:])]
  cfg = datasets.default_config()
  cfg.dataset = "sst2"
  cfg.data_dir = str(tmp_path / "no_tfds_here")
  cfg.files.train = write(tmp_path / "train.tsv", train, "tsv", ("sentence", "label"))
  cfg.files.validation = write(tmp_path / "dev.tsv", dev, "tsv", ("sentence", "label"))
  data = classification.build_classification_data(
    cfg, sp_tokenizer, pipeline.Batching(16, 4, 0, shard_index=0, shard_count=1)
  )
  assert data.num_train_examples == 10 and data.label_names == ("negative", "positive")
  spec = datasets.get_dataset_spec("sst2")
  encoder = classification.make_encoder(spec, sp_tokenizer, cfg, seq_len=16, split="validation")
  batches = list(data.eval_batches("validation"))
  ids = np.concatenate([b["input_ids"] for b in batches])
  labels = np.concatenate([b["labels"] for b in batches])
  weights = np.concatenate([b["weights"] for b in batches])
  assert weights.tolist() == [1] * 5 + [0] * 3
  for row, (text, label) in enumerate(dev):
    np.testing.assert_array_equal(ids[row], encoder.encode([text])["input_ids"])
    assert labels[row] == label
  expected = {encoder.encode([t])["input_ids"].tobytes(): y for t, y in train}
  batch = next(data.train_iter)
  for row in range(4):
    assert expected[batch["input_ids"][row].tobytes()] == batch["labels"][row]


def test_labels_may_be_names_or_ids(tmp_path):
  rows = [("a", "positive"), ("b", "0"), ("c", "negative"), ("d", "1")]
  path = write(tmp_path / "t.tsv", rows, "tsv", ("sentence", "label"))
  spec = datasets.get_dataset_spec("sst2")
  source = classification.open_split(spec, "train", files={"train": path})
  assert [r["label"] for r in source] == [1, 0, 0, 1]


@pytest.mark.parametrize(
  "labels,names",
  [
    (["10", "2", "2", "-1", "10"], ("-1", "2", "10")),  # integers: numeric order
    (["pos", "neg", "neutral", "neg"], ("neg", "neutral", "pos")),
  ],
)
def test_files_dataset_discovers_sorted_labels(labels, names, tmp_path):
  rows = [(f"text {i}", "x", label) for i, label in enumerate(labels)]
  path = write(tmp_path / "train.tsv", rows, "tsv")
  cfg = classification.complete_files_config(files_data(**{"files.train": path}))
  assert tuple(cfg.label_names) == names
  spec = datasets.spec_from_config(cfg)
  assert spec.num_labels == len(names) and spec.metrics == (
    ("accuracy", "f1") if len(names) == 2 else ("accuracy",)
  )
  source = classification.open_split(spec, "train", files=cfg.files)
  assert [names[r["label"]] for r in source] == labels


def test_named_labels_map_names_to_their_index(tmp_path):
  rows = [("a", "b", "entail"), ("c", "d", "contra"), ("e", "f", "neutral")]
  path = write(tmp_path / "train.jsonl", rows, "jsonl")
  cfg = files_data(**{"files.train": path, "label_names": ("entail", "neutral", "contra")})
  assert classification.complete_files_config(cfg) is cfg  # nothing to discover
  source = classification.open_split(datasets.spec_from_config(cfg), "train", files=cfg.files)
  assert [r["label"] for r in source] == [0, 2, 1]


def test_file_split_beside_a_tfds_mock_split(sp_tokenizer, tmp_path):
  """files.train from a file, validation from (mocked) TFDS: each read from its own place."""
  train = [(f"film number {i}", i % 2) for i in range(6)]
  cfg = datasets.default_config()
  cfg.dataset = "sst2"
  cfg.files.train = write(tmp_path / "train.tsv", train, "tsv", ("sentence", "label"))
  mock = [{"idx": i, "label": 1, "sentence": "from tfds"} for i in range(3)]

  def as_data_source(builder, split, **kwargs):
    assert split == "validation", split  # the train split never reaches TFDS
    return mock

  with tfds.testing.mock_data(
    policy=tfds.testing.MockPolicy.USE_CODE, as_data_source_fn=as_data_source
  ):
    data = classification.build_classification_data(
      cfg, sp_tokenizer, pipeline.Batching(16, 4, 0, shard_index=0, shard_count=1)
    )
    assert data.num_train_examples == 6 and data.num_eval_examples("validation") == 3
    batch = next(data.eval_batches("validation"))
  expected = encoding.EncodeExample(
    datasets.get_dataset_spec("sst2"),
    sp_tokenizer,
    seq_len=16,
    truncation="auto",
    head_tokens=128,
    template=encoding.template_for(sp_tokenizer),
    split="validation",
  ).encode(["from tfds"])["input_ids"]
  np.testing.assert_array_equal(batch["input_ids"][0], expected)


def test_regression_from_a_file(tmp_path):
  rows = [("a", "b", "0.5"), ("c", "d", "4.25"), ("e", "f", "-3")]
  path = write(tmp_path / "train.csv", rows, "csv")
  cfg = files_data(**{"files.train": path, "num_labels": 1})
  spec = datasets.spec_from_config(cfg)
  assert spec.is_regression and spec.main_metric == "validation/pearson_and_spearman"
  source = classification.open_split(spec, "train", files=cfg.files)
  assert [r["label"] for r in source] == [0.5, 4.25, -3.0]
  # STS-B's scores must lie in [0, 5]: the file's line is named.
  stsb = write(tmp_path / "stsb.tsv", rows[:2] + [("g", "h", "5.5")], "tsv",
               ("sentence1", "sentence2", "label"))  # fmt: skip
  with pytest.raises(ConfigError, match=r"stsb.tsv line 4: regression label '5.5'"):
    classification.open_split(datasets.get_dataset_spec("stsb"), "train", files={"train": stsb})


def test_sliced_file_split_and_glob(tmp_path):
  for part in range(3):
    rows = [(f"p{part} {i}", "h", i % 2) for i in range(4)]
    write(tmp_path / f"train-{part}.tsv", rows, "tsv")
  cfg = files_data(**{"files.train": str(tmp_path / "train-*.tsv"), "label_names": ("n", "p")})
  spec = datasets.spec_from_config(cfg)
  every = [r["premise"] for r in classification.open_split(spec, "train", files=cfg.files)]
  assert every == [f"p{part} {i}" for part in range(3) for i in range(4)]  # sorted matches
  for split, expected in [("train[:25%]", every[:3]), ("train[-2:]", every[-2:])]:
    got = [r["premise"] for r in classification.open_split(spec, split, files=cfg.files)]
    assert got == expected


def test_balanced_subsets_are_fixed_and_balanced():
  labels = [0] * 70 + [1] * 25 + [2] * 5
  subset = classification.balanced_subset(labels, 30, seed=0, regression=False)
  assert subset == sorted(set(subset)) and len(subset) == 30
  # 10 of each class asked; class 2 has 5, the other two share its rest.
  assert np.bincount(np.asarray(labels)[subset]).tolist() == [13, 12, 5]
  assert subset == classification.balanced_subset(labels, 30, seed=0, regression=False)
  assert subset != classification.balanced_subset(labels, 30, seed=1, regression=False)
  assert classification.balanced_subset(labels, 500, seed=0, regression=False) == list(range(100))
  counts = np.bincount(
    np.asarray(labels)[classification.balanced_subset(labels, 40, 3, regression=False)]
  )
  assert counts.tolist() == [18, 17, 5]


def test_train_and_eval_examples_take_balanced_subsets(sp_tokenizer, tmp_path):
  train = [(f"t {i}", "h", int(i < 30)) for i in range(100)]  # 30 positive, 70 negative
  cfg = files_data(
    **{
      "files.train": write(tmp_path / "train.tsv", train, "tsv"),
      "files.test": write(tmp_path / "test.tsv", train, "tsv"),
      "label_names": ("n", "p"),
      "train_examples": 20,
      "eval_examples": 50,
    }
  )
  data = classification.build_classification_data(
    cfg, sp_tokenizer, pipeline.Batching(16, 5, 0, shard_index=0, shard_count=1)
  )
  assert data.eval_splits == ["test"] and data.num_train_examples == 20
  assert data.num_eval_examples("test") == 50
  labels = [b["labels"][b["weights"] > 0] for b in data.eval_batches("test")]
  assert np.bincount(np.concatenate(labels)).tolist() == [25, 25]
  seen = np.concatenate([next(data.train_iter)["labels"] for _ in range(4)])  # one epoch
  assert np.bincount(seen).tolist() == [10, 10]


# End to end: train on files, predict a file.


@pytest.mark.slow
@pytest.mark.parametrize("regression", [False, True], ids=["classes", "regression"])
def test_predict_file_writes_predictions_and_metrics(
  regression, pydocs_tokenizer, data_dir, tmp_path, capsys
):
  train_cli = importlib.import_module("train")
  eval_cli = importlib.import_module("eval")
  rng = np.random.default_rng(0)
  words = "the json module reads files and writes text quickly".split()
  labels = [f"{rng.normal():.3f}" for _ in range(24)] if regression else ["no", "yes"] * 12
  rows = [(" ".join(rng.choice(words, 6)), " ".join(rng.choice(words, 4)), y) for y in labels]
  train = write(tmp_path / "train.tsv", rows, "tsv")
  dev = write(tmp_path / "dev.jsonl", rows[:10], "jsonl")
  unlabelled = write(
    tmp_path / "new.csv", [r[:2] for r in rows[:7]], "csv", ("premise", "hypothesis")
  )
  workdir = str(tmp_path / "run")
  argv = [
    f"--config={CONFIG}:files,{data_dir}",
    f"--workdir={workdir}",
    f"--config.data.tokenizer={pydocs_tokenizer}",
    f"--config.data.files.train={train}",
    f"--config.data.files.validation={dev}",
    "--config.data.text_fields=('premise', 'hypothesis')",
    "--config.num_eval_steps=-1",
  ] + (["--config.data.num_labels=1"] if regression else [])
  assert train_cli.run(["train.py", *argv]) == 0
  out = capsys.readouterr().out
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)["data"]
  if not regression:
    assert "Labels read from" in out and saved["label_names"] == ["no", "yes"]
  with open(os.path.join(workdir, "results.json")) as f:
    last = json.load(f)["evaluations"][-1]

  predictions = str(tmp_path / "p.jsonl")
  assert eval_cli.run(["eval.py", f"--workdir={workdir}", f"--predict_file={dev}",
                       f"--out={predictions}"]) == 0  # fmt: skip
  printed = capsys.readouterr().out
  metrics = json.loads(printed[printed.index("{") :])
  with open(predictions) as f:
    records = [json.loads(line) for line in f]
  assert [r["index"] for r in records] == list(range(10))
  if regression:
    scores = [r["score"] for r in records]
    expected = float(np.corrcoef(scores, [float(y) for y in labels[:10]])[0, 1])
    np.testing.assert_allclose(metrics["pearson"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["pearson"], last["validation/pearson"], rtol=1e-5)
  else:
    for r in records:
      assert r["label_name"] == ["no", "yes"][r["label"]]
      np.testing.assert_allclose(sum(r["probabilities"].values()), 1.0, rtol=1e-5)
    hits = [r["label_name"] == y for r, y in zip(records, labels[:10])]
    assert metrics["accuracy"] == pytest.approx(np.mean(hits))
    # The file is the validation split: the same number as the run's own evaluation.
    assert metrics["accuracy"] == pytest.approx(last["validation/accuracy"])

  # A file without the label column: predictions only.
  assert eval_cli.run(["eval.py", f"--workdir={workdir}", f"--predict_file={unlabelled}",
                       f"--out={predictions}"]) == 0  # fmt: skip
  assert "accuracy" not in capsys.readouterr().out
  with open(predictions) as f:
    assert [json.loads(line)["index"] for line in f] == list(range(7))


# The real data in ../shared/data (absent in a fresh clone: skipped).


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data (real SST-2, IMDB) absent")
def test_shared_sst2_and_imdb_read_as_their_datasets():
  sst2 = datasets.get_dataset_spec("sst2")
  dev = classification.open_split(
    sst2, "validation", files={"validation": os.path.join(SHARED, "sst2", "dev.tsv")}
  )
  assert len(dev) == 872 and sum(r["label"] for r in dev) == 444
  imdb = datasets.get_dataset_spec("imdb")
  test = classification.open_split(
    imdb, "test", files={"test": os.path.join(SHARED, "imdb", "test.jsonl.gz")}
  )
  assert len(test) == 25_000 and sum(r["label"] for r in test) == 12_500
