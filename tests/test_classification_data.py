"""Tests of the GLUE/IMDB/ListOps fine-tuning data: linformer.data.datasets (the specs),
linformer.data.encoding (templates, truncation) and linformer.data.classification (pipelines).

TFDS is mocked with `tfds.testing.mock_data(policy=MockPolicy.USE_CODE)`:
the real builders (`glue/*`, `imdb_reviews`, `listops/*`) give the features
and `as_data_source` gives random examples of them (or, with
`as_data_source_fn`, the records a test chooses). Everything else is the
project's real code path.
"""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from linformer.data import classification, datasets, encoding, pipeline
from linformer.data.tokenizer import Tokenizer, train_sentencepiece
from tests.helpers import assert_batches_equal, minilm_tokenizer_json, take

SEQ_LEN = 24
GLUE_AND_IMDB = ["sst2", "qnli", "qqp", "imdb", "cola", "mrpc", "stsb", "mnli", "rte", "wnli"]

_WORDS = (
  "the quick brown fox jumps over a lazy dog while seven wizards "
  "quietly judge boxing matches near old rivers and green hills "
  "every morning film critics review movies about cats"
).split()


@pytest.fixture(scope="module")
def sp_tokenizer():
  rng = np.random.default_rng(0)
  sentences = [" ".join(rng.choice(_WORDS, 12)) for _ in range(300)]
  return train_sentencepiece(sentences, vocab_size=120, num_threads=1)


@pytest.fixture(scope="module")
def bert_tokenizer():
  return Tokenizer.load(minilm_tokenizer_json())


def config(dataset, **overrides):
  cfg = datasets.default_config()
  cfg.dataset = dataset
  cfg.update(overrides)
  return cfg


def build(
  dataset,
  tokenizer,
  *,
  seq_len=SEQ_LEN,
  batch_size=4,
  seed=0,
  shard_index=0,
  shard_count=1,
  **overrides,
):
  return classification.build_classification_data(
    config(dataset, **overrides),
    tokenizer,
    pipeline.Batching(seq_len, batch_size, seed, shard_index, shard_count),
  )


def mock_random(num_examples=10):
  return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def mock_records(records):
  """TFDS mocked so that every split of every dataset reads `records`.

  `records` is a list of examples or a dict split -> list of examples.
  """

  def as_data_source(builder, split, **kwargs):
    del builder, kwargs
    return records[split] if isinstance(records, dict) else records

  return tfds.testing.mock_data(
    policy=tfds.testing.MockPolicy.USE_CODE, as_data_source_fn=as_data_source
  )


def sst2_records(n):
  """Distinct sentences: example i is identified by its text."""
  return [{"idx": i, "label": i % 2, "sentence": f"{_WORDS[i % 10]} number {i}"} for i in range(n)]


def row_id(tokenizer, batch, row):
  return tokenizer.decode(batch["input_ids"][row])


# Every dataset through the real pipeline.


@pytest.mark.parametrize("dataset", GLUE_AND_IMDB)
def test_every_dataset_yields_batches_of_the_right_shape(dataset, bert_tokenizer):
  with mock_random(num_examples=10):
    data = build(dataset, bert_tokenizer)
    batches = take(data.train_iter, 3)
    evals = {s: list(data.eval_batches(s)) for s in data.eval_splits}
  spec = datasets.get_dataset_spec(dataset)
  assert data.spec == spec and data.num_labels == spec.num_labels
  assert data.num_train_examples == 10
  assert tuple(data.label_names) == spec.label_names
  expected_evals = {"mnli": ["matched", "mismatched"], "imdb": ["test"]}
  assert data.eval_splits == expected_evals.get(dataset, ["validation"])
  assert spec.main_metric.split("/")[0] in data.eval_splits
  regression = dataset == "stsb"
  for batch in batches + [b for bs in evals.values() for b in bs]:
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "weights"}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
      assert batch[key].shape == (4, SEQ_LEN) and batch[key].dtype == np.int32
    assert batch["labels"].shape == batch["weights"].shape == (4,)
    assert batch["labels"].dtype == (np.float32 if regression else np.int32)
    assert batch["weights"].dtype == np.float32
    if regression:
      assert ((batch["labels"] >= 0) & (batch["labels"] <= 5)).all()
    else:
      assert ((batch["labels"] >= 0) & (batch["labels"] < spec.num_labels)).all()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    np.testing.assert_array_equal(mask, ids != bert_tokenizer.pad_id)
    assert (ids[:, 0] == bert_tokenizer.bos_id).all()  # [CLS] first.
    # [CLS] a [SEP] (b [SEP]); b has token type 1.
    seps = (ids == bert_tokenizer.eos_id).sum(axis=1)
    assert (seps == (2 if spec.is_pair else 1)).all()
    real = batch["weights"] > 0
    if spec.is_pair:
      types = batch["token_type_ids"]
      first = (types == 0) & (mask == 1)
      second = types == 1
      assert (first.sum(axis=1)[real] > 2).all()  # [CLS] a [SEP]: a is there,
      assert (second.sum(axis=1)[real] > 1).all()  # b [SEP]: so is b.
    else:
      assert (batch["token_type_ids"] == 0).all()
  # 10 examples in batches of 4: 3 eval batches, 2 filler rows.
  for split_batches in evals.values():
    assert len(split_batches) == data.num_eval_batches(data.eval_splits[0]) == 3
    weights = np.concatenate([b["weights"] for b in split_batches])
    np.testing.assert_array_equal(weights, [1] * 10 + [0] * 2)


def test_sentencepiece_pairs_use_the_roberta_layout(sp_tokenizer):
  with mock_random(num_examples=6):
    batch = next(build("mnli", sp_tokenizer).train_iter)
  template = encoding.template_for(sp_tokenizer)
  assert template.style == "roberta"
  bos, eos = sp_tokenizer.bos_id, sp_tokenizer.eos_id
  for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
    ids = row[mask == 1].tolist()
    assert ids[0] == bos and ids[-1] == eos and ids.count(eos) == 3
    middle = ids.index(eos)
    assert middle > 1 and ids[middle + 1] == eos and middle + 2 < len(ids) - 1
  assert (batch["token_type_ids"] == 0).all()


def test_listops_reads_the_configured_builder(bert_tokenizer):
  assert datasets.get_dataset_spec("listops").tfds_name == "listops/default"
  spec = datasets.spec_from_config(config("listops", listops_config="small"))
  assert spec.tfds_name == "listops/small" and spec.num_labels == 10
  assert spec.eval_split_names == ["validation", "test"]
  with mock_random(num_examples=5):
    data = build("listops", bert_tokenizer, listops_config="small")
    batch = next(data.train_iter)
  assert data.spec.tfds_name == "listops/small"
  assert batch["input_ids"].shape == (4, SEQ_LEN)
  assert ((batch["labels"] >= 0) & (batch["labels"] < 10)).all()


# Templates and truncation.


def reference_longest_first(len_a, len_b, budget):
  """Tokenizer.encode_pair's loop: pop from the longer side, a on ties."""
  while len_a + len_b > budget:
    if len_b > len_a:
      len_b -= 1
    else:
      len_a -= 1
  return len_a, len_b


def test_pair_truncation_is_longest_first():
  for budget in range(2, 30):
    for len_a in range(0, 40, 3):
      for len_b in range(0, 40, 4):
        assert encoding.pair_lengths(len_a, len_b, budget) == (
          reference_longest_first(len_a, len_b, budget)
        ), (len_a, len_b, budget)


def test_pair_truncation_keeps_both_sides(bert_tokenizer):
  template = encoding.template_for(bert_tokenizer)
  long, short = list(range(1000, 1100)), [7, 8, 9]
  for a, b in [(long, short), (short, long), (long, long)]:
    out = encoding.encode_ids(template, a, b, seq_len=20, pad_id=0)
    ids, types = out["input_ids"].tolist(), out["token_type_ids"].tolist()
    assert out["attention_mask"].sum() == 20  # Full: budget 17 used.
    sep = ids.index(bert_tokenizer.eos_id)
    kept_a, kept_b = ids[1:sep], ids[sep + 1 : -1]
    assert len(kept_a) + len(kept_b) == 17
    if a is short:
      assert kept_a == short and kept_b == long[:14]
    elif b is short:
      assert kept_a == long[:14] and kept_b == short
    else:
      assert kept_a == long[:8] and kept_b == long[:9]
    assert types == [0] * (sep + 1) + [1] * (len(kept_b) + 1)


def test_bert_layout_matches_tokenizer_encode_pair(sp_tokenizer):
  template = encoding.template_for(sp_tokenizer, "bert")
  texts = [
    "the quick brown fox jumps over a lazy dog " * 3,
    "seven wizards",
    "film critics review movies about cats " * 2,
  ]
  for text_a in texts:
    for text_b in texts:
      for n in (8, 16, 40):
        out = encoding.encode_ids(
          template,
          sp_tokenizer.encode(text_a),
          sp_tokenizer.encode(text_b),
          seq_len=n,
          pad_id=sp_tokenizer.pad_id,
        )
        length = int(out["attention_mask"].sum())
        assert out["input_ids"][:length].tolist() == sp_tokenizer.encode_pair(
          text_a, text_b, max_length=n
        )


def test_head_tail_truncation_keeps_the_right_tokens(bert_tokenizer):
  template = encoding.template_for(bert_tokenizer)
  doc = list(range(1000, 2000))
  encode = lambda strategy, **kw: encoding.encode_ids(  # pylint: disable=g-long-lambda
    template, doc, None, seq_len=300, pad_id=0, truncation=strategy, **kw
  )["input_ids"].tolist()
  cls_id, sep = bert_tokenizer.bos_id, bert_tokenizer.eos_id
  assert encode("head") == [cls_id] + doc[:298] + [sep]
  assert encode("tail") == [cls_id] + doc[-298:] + [sep]
  # Sun et al.: first 128 and last n - 2 - 128 = 170 tokens.
  assert encode("head_tail") == [cls_id] + doc[:128] + doc[-170:] + [sep]
  assert encode("head_tail", head_tokens=10) == ([cls_id] + doc[:10] + doc[-288:] + [sep])
  # Short documents are never cut, whatever the strategy.
  short = encoding.encode_ids(
    template, doc[:5], None, seq_len=300, pad_id=0, truncation="head_tail"
  )
  assert short["input_ids"][:7].tolist() == [cls_id] + doc[:5] + [sep]
  assert short["attention_mask"].sum() == 7
  with pytest.raises(ValueError, match="truncation='middle'"):
    encoding.truncate(doc, 10, "middle")


def test_imdb_defaults_to_head_tail_in_the_pipeline(bert_tokenizer):
  text = " ".join(f"w{i}" for i in range(400))
  records = [{"text": text, "label": 1}] * 3
  with mock_records(records):
    data = build("imdb", bert_tokenizer, seq_len=32, head_tokens=8)
    head = build("imdb", bert_tokenizer, seq_len=32, head_tokens=8, truncation="head")
    got = next(data.eval_batches("test"))["input_ids"][0].tolist()
    got_head = next(head.eval_batches("test"))["input_ids"][0].tolist()
  ids = bert_tokenizer.encode(text)
  assert data.truncation == "head_tail" and head.truncation == "head"
  cls_id, sep = bert_tokenizer.bos_id, bert_tokenizer.eos_id
  assert got == [cls_id] + ids[:8] + ids[-22:] + [sep]
  assert got_head == [cls_id] + ids[:30] + [sep]
  assert encoding.resolve_truncation(datasets.get_dataset_spec("sst2"), "auto") == "head"


def test_templates_from_tokenizer_json(bert_tokenizer, tmp_path):
  bert = encoding.template_for(bert_tokenizer)
  assert bert.style == "TemplateProcessing"
  out = encoding.encode_ids(bert, [5, 6], [7], seq_len=8, pad_id=0)
  assert out["input_ids"].tolist() == [101, 5, 6, 102, 7, 102, 0, 0]
  assert out["token_type_ids"].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
  assert out["attention_mask"].tolist() == [1] * 6 + [0] * 2

  spec = json.loads(bert_tokenizer.fingerprint_bytes)
  spec["post_processor"] = {
    "type": "RobertaProcessing",
    "sep": ["[SEP]", 102],
    "cls": ["[CLS]", 101],
    "trim_offsets": True,
    "add_prefix_space": False,
  }
  path = tmp_path / "tokenizer.json"
  path.write_text(json.dumps(spec))
  roberta = encoding.template_for(Tokenizer.load(str(path)))
  assert roberta.style == "roberta"
  out = encoding.encode_ids(roberta, [5, 6], [7], seq_len=8, pad_id=0)
  assert out["input_ids"].tolist() == [101, 5, 6, 102, 102, 7, 102, 0]
  assert out["token_type_ids"].tolist() == [0] * 8
  forced = encoding.template_for(bert_tokenizer, "roberta")
  assert forced.style == "roberta"
  with pytest.raises(ValueError, match="pair_template"):
    encoding.template_for(bert_tokenizer, "xlnet")


def test_encode_for_prediction(bert_tokenizer):
  spec = datasets.get_dataset_spec("qnli")
  batch = encoding.encode_for_prediction(
    spec, bert_tokenizer, "what is it?", "it is a test.", seq_len=16
  )
  expected = encoding.encode_ids(
    encoding.template_for(bert_tokenizer),
    bert_tokenizer.encode("what is it?"),
    bert_tokenizer.encode("it is a test."),
    seq_len=16,
    pad_id=0,
  )
  for key, value in expected.items():
    np.testing.assert_array_equal(batch[key], value[None])
  assert batch["labels"].shape == (1,) and batch["labels"].dtype == np.int32
  assert batch["weights"].tolist() == [1.0]
  stsb = encoding.encode_for_prediction(
    datasets.get_dataset_spec("stsb"), bert_tokenizer, "a", "b", seq_len=8
  )
  assert stsb["labels"].dtype == np.float32
  with pytest.raises(ValueError, match="text_pair"):
    encoding.encode_for_prediction(spec, bert_tokenizer, "alone", seq_len=16)
  with pytest.raises(ValueError, match="single texts"):
    encoding.encode_for_prediction(
      datasets.get_dataset_spec("sst2"), bert_tokenizer, "a", "b", seq_len=16
    )


# Sharding, determinism, checkpointing, eval padding.


def test_host_shards_concatenate_to_the_one_host_batch(bert_tokenizer):
  with mock_records(sst2_records(21)):
    one = take(build("sst2", bert_tokenizer, batch_size=8).train_iter, 4)
    hosts = [
      take(build("sst2", bert_tokenizer, batch_size=4, shard_index=h, shard_count=2).train_iter, 4)
      for h in range(2)
    ]
    one_eval = list(build("sst2", bert_tokenizer, batch_size=8).eval_batches("validation"))
    hosts_eval = [
      list(
        build("sst2", bert_tokenizer, batch_size=4, shard_index=h, shard_count=2).eval_batches(
          "validation"
        )
      )
      for h in range(2)
    ]
  for step in range(4):
    for key in one[step]:
      np.testing.assert_array_equal(
        one[step][key], np.concatenate([hosts[0][step][key], hosts[1][step][key]])
      )
  assert len(one_eval) == len(hosts_eval[0]) == len(hosts_eval[1]) == 3
  for step in range(3):
    for key in one_eval[step]:
      np.testing.assert_array_equal(
        one_eval[step][key], np.concatenate([hosts_eval[0][step][key], hosts_eval[1][step][key]])
      )


def test_train_epochs_are_reshuffled_permutations(bert_tokenizer):
  n = 12
  with mock_records(sst2_records(n)):
    data = build("sst2", bert_tokenizer, batch_size=3, seed=1)
    batches = take(data.train_iter, 8)  # Two epochs of 12.
    again = take(build("sst2", bert_tokenizer, batch_size=3, seed=1).train_iter, 8)
    other = take(build("sst2", bert_tokenizer, batch_size=3, seed=2).train_iter, 8)
  seen = [row_id(bert_tokenizer, b, r) for b in batches for r in range(3)]
  assert sorted(seen[:n]) == sorted(seen[n:]) and len(set(seen[:n])) == n
  assert seen[:n] != seen[n:]
  for x, y in zip(batches, again):
    assert_batches_equal(x, y)
  assert any(not np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches, other))
  assert all((b["weights"] == 1).all() for b in batches)
  for b in batches:  # Labels follow their example: label = i % 2.
    for r in range(3):
      i = int(row_id(bert_tokenizer, b, r).split()[-1])
      assert b["labels"][r] == i % 2


def test_train_iterator_state_resumes_exactly(bert_tokenizer):
  with mock_records(sst2_records(10)):
    it = build("sst2", bert_tokenizer, batch_size=3).train_iter
    take(it, 5)
    state = it.get_state()
    expected = take(it, 4)
    resumed = build("sst2", bert_tokenizer, batch_size=3).train_iter
    resumed.set_state(state)
    got = take(resumed, 4)
  for x, y in zip(expected, got):
    assert_batches_equal(x, y)


def test_eval_batches_are_full_padded_and_cover_the_split(bert_tokenizer):
  n, batch_size, hosts = 10, 3, 2
  with mock_records(sst2_records(n)):
    per_host = []
    for h in range(hosts):
      data = build("sst2", bert_tokenizer, batch_size=batch_size, shard_index=h, shard_count=hosts)
      per_host.append(list(data.eval_batches("validation")))
      again = list(data.eval_batches("validation"))  # A fresh pass each call.
      assert len(again) == len(per_host[-1])
      assert data.num_eval_examples("validation") == n
  # ceil(10 / (2 * 3)) = 2 batches per host: 12 rows, 2 of them filler.
  assert [len(b) for b in per_host] == [2, 2]
  seen, fillers = [], 0
  for batches in per_host:
    for batch in batches:
      assert batch["input_ids"].shape == (batch_size, SEQ_LEN)
      for r in range(batch_size):
        if batch["weights"][r] == 0:
          fillers += 1
          # [CLS] [SEP]: attended, so no all-masked row; label 0.
          assert batch["attention_mask"][r].sum() == 2
          assert batch["labels"][r] == 0
        else:
          assert batch["weights"][r] == 1
          seen.append(row_id(bert_tokenizer, batch, r))
  assert fillers == 2
  assert sorted(seen) == sorted(f"{_WORDS[i % 10]} number {i}" for i in range(n))


# Bad inputs.


@pytest.mark.parametrize(
  "label,match",
  [
    (2, r"'sst2'.*split 'train', example 3\): label 2 is out of range \[0, 2\)"),
    (-1, r"'sst2'.*label -1 is out of range.*unlabeled"),
  ],
)
def test_out_of_range_labels_raise(bert_tokenizer, label, match):
  records = sst2_records(6)
  records[3] = dict(records[3], label=label)
  with mock_records(records):
    data = build("sst2", bert_tokenizer, batch_size=6)
    with pytest.raises(ValueError, match=match):
      next(data.train_iter)
    with pytest.raises(ValueError, match=match.replace("'train'", "'validation'")):
      list(data.eval_batches("validation"))


def test_out_of_range_regression_label_raises(bert_tokenizer):
  records = [
    {"idx": i, "label": np.float32(v), "sentence1": "a b", "sentence2": "c"}
    for i, v in enumerate([0.0, 5.0, 7.5])
  ]
  with mock_records(records):
    data = build("stsb", bert_tokenizer, batch_size=3)
    with pytest.raises(ValueError, match=r"'stsb'.*label 7\.5 is outside"):
      list(data.eval_batches("validation"))


def test_unknown_dataset_lists_the_known_ones(bert_tokenizer):
  with pytest.raises(
    ValueError,
    match=(
      r"config\.data\.dataset='sst5': unknown dataset\. Known datasets: cola, "
      r"imdb, listops, mnli, mrpc, qnli, qqp, rte, sst2, stsb, wnli, or 'files' \(your own, "
      r"from config\.data\.files\)\."
    ),
  ):
    build("sst5", bert_tokenizer)
  with pytest.raises(ValueError, match="truncation"):
    build("sst2", bert_tokenizer, truncation="middle")


def test_short_sequences_are_refused(bert_tokenizer):
  template = encoding.template_for(bert_tokenizer)
  with pytest.raises(ValueError, match="seq_len=4"):
    encoding.encode_ids(template, [5], [6], seq_len=4, pad_id=0)


@pytest.mark.slow
def test_train_iterator_checkpoints_with_orbax(bert_tokenizer, tmp_path):
  import grain  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  with mock_records(sst2_records(10)):
    it = build("sst2", bert_tokenizer, batch_size=3).train_iter
    take(it, 2)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as manager:
      manager.save(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
      manager.wait_until_finished()
      expected = next(it)
      resumed = build("sst2", bert_tokenizer, batch_size=3).train_iter
      manager.restore(
        2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(resumed))
      )
    assert_batches_equal(expected, next(resumed))


def test_worker_processes_give_the_same_batches(bert_tokenizer):
  with mock_records(sst2_records(10)):
    threads = take(build("sst2", bert_tokenizer, batch_size=3).train_iter, 4)
    workers = build("sst2", bert_tokenizer, batch_size=3, num_workers=1)
    got = take(workers.train_iter, 4)
    evals = list(workers.eval_batches("validation"))
  for x, y in zip(threads, got):
    assert_batches_equal(x, y)
  assert len(evals) == 4


def test_a_custom_spec_holds_out_part_of_train(bert_tokenizer):
  spec = dataclasses.replace(
    datasets.get_dataset_spec("imdb"),
    train_split="train[:80%]",
    eval_splits=(("validation", "train[80%:]"), ("test", "test")),
    main_metric="validation/accuracy",
  )
  records = {
    "train[:80%]": [{"text": "a b", "label": 0}] * 8,
    "train[80%:]": [{"text": "c d", "label": 1}] * 2,
    "test": [{"text": "e", "label": 1}] * 5,
  }
  with mock_records(records):
    data = classification.build_classification_data(
      config("imdb"),
      bert_tokenizer,
      pipeline.Batching(seq_len=8, batch_size=2, seed=0, shard_index=0, shard_count=1),
      spec=spec,
    )
    assert data.num_train_examples == 8
    assert data.eval_splits == ["validation", "test"]
    assert [data.num_eval_batches(s) for s in data.eval_splits] == [1, 3]
    assert (next(data.eval_batches("validation"))["labels"] == 1).all()
