"""Bad inputs, tried as a new user would: each one exits with status 2, prints one line on
stderr naming the field or file (and the fix), and writes nothing.

Most cases run in-process through the command-line entry functions (`train.run`, `eval.run`,
`export.run`: argv in, exit status out); a few run as real processes to prove
the exit status and the single line end to end.
"""

import importlib
import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.helpers import finetune_config, small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "cli_config.py")
train = importlib.import_module("train")
eval_cli = importlib.import_module("eval")
export_cli = importlib.import_module("export")


def listing(path):
  """Every file under `path` with its size (None if `path` does not exist)."""
  if not os.path.exists(path):
    return None
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sorted(
    (os.path.relpath(os.path.join(d, f), path), os.path.getsize(os.path.join(d, f)))
    for d, _, files in os.walk(path)
    for f in files
  ) + sorted(os.path.relpath(d, path) for d, _, _ in os.walk(path))


def assert_refused(code, err, *names):
  """Exit status 2 and exactly one line on stderr that contains every one of `names`."""
  lines = err.strip().splitlines()
  assert code == 2, err
  assert len(lines) == 1, err
  for name in names:
    assert name in lines[0], lines[0]


def run_train(capsys, workdir, *argv, kind="pretrain", data_dir):
  code = train.run(
    ["train.py", f"--config={CONFIG}:{kind},{data_dir}", f"--workdir={workdir}", *argv]
  )
  return code, capsys.readouterr().err


def assert_nothing_written(workdir):
  assert not os.path.exists(workdir) or not os.listdir(workdir), os.listdir(workdir)


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
  """A word-level tokenizer.json with the five special tokens."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers

  tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  specials = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
  tok.train_from_iterator(
    ["a small corpus of words"], trainers.WordLevelTrainer(special_tokens=specials)
  )
  path = str(tmp_path_factory.mktemp("tok") / "tokenizer.json")
  tok.save(path)
  return path


@pytest.fixture(scope="module")
def pydocs(data_dir):
  """The built-in corpus, prepared before the tests that read it (its progress bars would be
  on stderr beside the one line)."""
  import tensorflow_datasets as tfds

  from linformer.data import pydocs  # noqa: F401  (registers the builder)

  tfds.builder("pydocs", data_dir=data_dir).download_and_prepare(file_format="array_record")
  return data_dir


@pytest.fixture(scope="module")
def binary_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("bin") / "random.txt"
  path.write_bytes(os.urandom(20_000))
  return str(path)


# train.py: every config field.

CONFIG_CASES = [
  (["--config.optimizer.lr=-1"], "config.optimizer.lr=-1.0"),
  (["--config.optimizer.lr=0"], "config.optimizer.lr=0.0"),
  (["--config.optimizer.end_lr=-0.1"], "config.optimizer.end_lr"),
  (["--config.optimizer.b1=1.0"], "config.optimizer.b1"),
  (["--config.optimizer.b2=-0.5"], "config.optimizer.b2"),
  (["--config.optimizer.eps=0"], "config.optimizer.eps"),
  (["--config.optimizer.weight_decay=-1"], "config.optimizer.weight_decay"),
  (["--config.optimizer.grad_clip_norm=-1"], "config.optimizer.grad_clip_norm"),
  (["--config.optimizer.schedule=cyclic"], "config.optimizer.schedule='cyclic'"),
  (["--config.optimizer.warmup_steps=100"], "config.optimizer.warmup_steps=100"),
  (["--config.optimizer.warmup_steps=-1"], "config.optimizer.warmup_steps=-1"),
  (["--config.batch_size=0"], "config.batch_size=0"),
  (["--config.grad_accum_steps=0"], "config.grad_accum_steps=0"),
  (["--config.grad_accum_steps=5"], "config.grad_accum_steps=5"),
  (["--config.num_train_steps=0"], "config.num_train_steps=0"),
  (["--config.num_train_steps=-5"], "config.num_train_steps=-5"),
  (["--config.num_train_steps=-1"], "config.num_epochs"),
  (["--config.log_every_steps=0"], "config.log_every_steps=0"),
  (["--config.eval_every_steps=0"], "config.eval_every_steps=0"),
  (["--config.checkpoint_every_steps=-3"], "config.checkpoint_every_steps=-3"),
  (["--config.num_eval_steps=0"], "config.num_eval_steps=0"),
  (["--config.max_checkpoints_to_keep=0"], "config.max_checkpoints_to_keep=0"),
  (["--config.freeze_pretrained_steps=2"], "config.freeze_pretrained_steps"),
  (["--config.freeze_lr=-1.0"], "config.freeze_lr"),
  (["--config.peak_flops=-1.0"], "config.peak_flops"),
  (["--config.transfer_steps=-1"], "config.transfer_steps=-1"),
  (["--config.transfer_steps=20"], "config.transfer_steps=20"),
  (["--config.transfer_steps=1"], "config.transfer_steps: the teacher is config.init_from"),
  (
    ["--config.transfer_steps=1", "--config.init_from=/x", "--config.model.projection=mean_pool"],
    "config.transfer_steps=1: attention transfer trains Linformer's E and F",
  ),
  (["--config.transfer_lr=0.0"], "config.transfer_lr=0.0"),
  (["--config.distill.alpha=-1.0"], "config.distill.alpha=-1.0"),
  (["--config.distill.beta=-0.5"], "config.distill.beta=-0.5"),
  (["--config.distill.temperature=0.0"], "config.distill.temperature=0.0"),
  (["--config.distill.alpha=1.0"], "config.distill.alpha: the teacher is config.init_from"),
  (["--config.model.activation_dropout_rate=1.0"], "config.model.activation_dropout_rate"),
  (["--config.task=mt"], "config.task='mt'"),
  (["--config.init_from=/nonexistent/run"], "config.init_from='/nonexistent/run'"),
  (["--config.model.num_heads=5"], "config.model.hidden_size"),
  (["--config.model.k=100"], "config.model.k=100"),
  (["--config.model.attention=fast"], "config.model.attention='fast'"),
  (["--config.model.dropout_rate=1.0"], "config.model.dropout_rate"),
  (["--config.model.dtype=float8"], "config.model.dtype"),
  (["--config.model.causal=True"], "config.model.causal=True"),
  (["--config.task=clm"], "config.model.causal=False"),
  (["--config.model.foo=1"], "config.model has no field 'foo'"),
  (["--config.nope=1"], "config has no field 'nope'"),
  (["--config.batch_size=1.5"], "--config.batch_size=1.5"),
  (["--config.mesh.data=16"], "config.mesh="),
  (["--config.mesh.rules.embed=bogus"], "config.mesh.rules.embed='bogus'"),
  (["--config.data.mask_prob=0"], "config.data.mask_prob"),
  (["--config.data.mask_prob=1"], "config.data.mask_prob"),
  (["--config.data.vocab_size=5"], "config.data.vocab_size=5"),
  (["--config.data.num_workers=-1"], "config.data.num_workers=-1"),
  (["--config.data.max_predictions=0"], "config.data.max_predictions=0"),
  (["--config.data.tokenizer=/nonexistent/tokenizer.json"], "config.data.tokenizer"),
  (["--config.data.dataset=nope"], "config.data.dataset='nope'"),
  (["--config.data.dataset=lm1b"], "tfds build lm1b"),
  (["--config.data.dataset=text_files"], "text_files_train_patterns"),
  (
    ["--config.data.dataset=text_files", "--config.data.text_files_train_patterns=/no/*.txt"],
    "text_files_train_patterns",
  ),
  (["--until_step=0"], "--until_step=0"),
  (["--until_step=x"], "--until_step=x"),
  (["--bogus"], "--bogus"),
]


@pytest.mark.parametrize("argv,name", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_bad_config_value(argv, name, data_dir, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  code, err = run_train(capsys, workdir, *argv, data_dir=data_dir)
  assert_refused(code, err, name, "train.py: error:")
  assert_nothing_written(workdir)


def test_warmup_follows_a_short_run(data_dir):
  """size=tiny has 60 warmup steps; 20 steps take 10% of them unless warmup is set."""
  from configs import pretrain

  config = pretrain.get_config("size=tiny")
  config.lock()
  config.num_train_steps = 20
  assert config.optimizer.warmup_steps == 2
  config.optimizer.warmup_steps = 5
  assert config.optimizer.warmup_steps == 5


# train.py: data.


def test_corpus_that_is_not_text(binary_file, data_dir, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  argv = [
    "--config.data.dataset=text_files",
    f"--config.data.text_files_train_patterns={binary_file}",
  ]
  code, err = run_train(capsys, workdir, *argv, data_dir=data_dir)
  assert_refused(code, err, "not text", binary_file)
  assert_nothing_written(workdir)


@pytest.mark.parametrize(
  "content,names",
  [
    (b'{"text": "a review"}\n{"body": "another"}\n', ["reviews.jsonl line 2 has no field 'text'"]),
    (b'{"text": "the only review"}\n', ["found 1 non-empty document", "need at least 2"]),
  ],
  ids=["missing field", "one document"],
)
def test_corpus_table_refused(content, names, data_dir, tmp_path, capsys):
  path = tmp_path / "reviews.jsonl"
  path.write_bytes(content)
  workdir = str(tmp_path / "run")
  argv = ["--config.data.dataset=text_files", f"--config.data.text_files_train_patterns={path}"]
  code, err = run_train(capsys, workdir, *argv, data_dir=data_dir)
  assert_refused(code, err, "text_files_train_patterns", *names)
  assert_nothing_written(workdir)


def test_vocabulary_too_small_for_the_corpus(pydocs, data_dir, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  code, err = run_train(capsys, workdir, "--config.data.vocab_size=50", data_dir=data_dir)
  assert_refused(code, err, "config.data.vocab_size=50", "at least")
  assert_nothing_written(workdir)


@pytest.mark.parametrize(
  "argv,name",
  [
    (["--config.data.field=body"], "config.data.field='body'"),
    (["--config.data.train_split=test"], "'test'"),
  ],
)
def test_field_or_split_the_corpus_lacks(argv, name, pydocs, data_dir, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  code, err = run_train(capsys, workdir, *argv, data_dir=data_dir)
  assert_refused(code, err, name)
  assert_nothing_written(workdir)


def test_finetuning_data_that_is_not_prepared_fails_fast(
  tokenizer_json, data_dir, tmp_path, capsys
):
  workdir = str(tmp_path / "run")
  start = time.time()
  code, err = run_train(
    capsys, workdir, f"--config.data.tokenizer={tokenizer_json}", kind="sst2", data_dir=data_dir
  )
  assert time.time() - start < 20
  assert_refused(code, err, "glue/sst2", "tfds build glue/sst2", "config.data.data_dir")
  assert_nothing_written(workdir)


@pytest.mark.parametrize(
  "kind,argv,name",
  [
    ("sst2", [], "needs a tokenizer"),
    ("sst2", ["--config.data.dataset=nope"], "config.data.dataset='nope'"),
    ("sst2", ["--config.num_epochs=0", "--config.num_train_steps=-1"], "config.num_epochs"),
    ("sst2", ["--config.data.truncation=middle"], "config.data.truncation='middle'"),
    ("sst2", ["--config.data.pair_template=gpt"], "config.data.pair_template='gpt'"),
    ("listops", ["--config.data.listops_config=bogus"], "config.data.listops_config='bogus'"),
  ],
)
def test_bad_finetuning_config(kind, argv, name, data_dir, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  code, err = run_train(capsys, workdir, *argv, kind=kind, data_dir=data_dir)
  assert_refused(code, err, name)
  assert_nothing_written(workdir)


# train.py: fine-tuning files (config.data.files, dataset=files).

BAD_FILES = {
  "no_header.tsv": b"hide new secretions from the parental units\t0\nbad film\t1\n",
  "other_columns.tsv": b"text\tlabel\ngood\t1\n",
  "empty.tsv": b"",
  "header_only.tsv": b"sentence\tlabel\n",
  "bad_label.tsv": b"sentence\tlabel\ngood\t1\nodd\t7\n",
  "latin1.tsv": b"sentence\tlabel\ngood\t1\ncaf\xe9\t0\n",
  "fields.tsv": b"sentence\tlabel\ngood\t1\na\ttab\t0\n",
  "broken.jsonl": b'{"sentence": "good", "label": 1}\n{"sentence": "bad\n',
  "list.jsonl": b'["good", 1]\n',
  "not_gzip.tsv.gz": b"sentence\tlabel\ngood\t1\n",
  "notes.txt": b"sentence\tlabel\ngood\t1\n",
  "good.tsv": b"sentence\tlabel\ngood\t1\nbad\t0\n",
  "stsb.tsv": b"sentence1\tsentence2\tlabel\na\tb\t2.5\nc\td\t6\n",
  "one_label.tsv": b"text\tlabel\na\tx\nb\tx\n",
  "pairs.csv": b"premise,hypothesis,label\na,b,x\nc,d,y\n",
  "pairs_dev.csv": b"premise,hypothesis,label\na,b,x\nc,d,y\n",
  "good_dev.tsv": b"sentence\tlabel\ngood\t1\nbad\t0\n",
  "one_label_dev.tsv": b"text\tlabel\na\tx\nb\tx\n",
  "open_quote.csv": b'sentence,label\n"a film, with a comma,1\ngood,1\nbad,0\n',
  "repeated.tsv": b"sentence\tsentence\tlabel\na\tb\t1\n",
  "tabs.csv": b"sentence\tlabel\ngood\t1\n",
}

FILE_CASES = [
  (
    "sst2",
    ["train=/no/such/train.tsv"],
    ["config.data.files.train='/no/such/train.tsv'", "no such file"],
  ),
  ("sst2", ["train=/no/such/*.tsv"], ["config.data.files.train", "matches no file"]),
  ("sst2", ["train={dir}"], ["config.data.files.train", "is a directory"]),
  (
    "sst2",
    ["train={other_columns.tsv}"],
    ["other_columns.tsv", "no column 'sentence'", "text, label"],
  ),
  ("sst2", ["train={no_header.tsv}"], ["no_header.tsv", "no header line"]),
  ("sst2", ["train={empty.tsv}"], ["empty.tsv", "is empty"]),
  ("sst2", ["train={header_only.tsv}"], ["header_only.tsv", "no examples"]),
  ("sst2", ["train={bad_label.tsv}"], ["bad_label.tsv line 3", "label '7'", "negative"]),
  ("sst2", ["train={latin1.tsv}"], ["latin1.tsv line 3", "not UTF-8"]),
  ("sst2", ["train={fields.tsv}"], ["fields.tsv line 3", "has 3 fields", "header has 2"]),
  ("sst2", ["train={broken.jsonl}"], ["broken.jsonl line 2", "not JSON"]),
  ("sst2", ["train={list.jsonl}"], ["list.jsonl line 1", "not an object"]),
  ("sst2", ["train={not_gzip.tsv.gz}"], ["not_gzip.tsv.gz", "not a complete gzip file"]),
  ("sst2", ["train={notes.txt}"], ["config.data.files.train", "unknown file format '.txt'"]),
  (
    "sst2",
    ["train={good.tsv}", "validation={bad_label.tsv}"],
    ["config.data.files.validation", "line 3"],
  ),
  ("sst2", ["test={good.tsv}"], ["config.data.files.test", "does not read a split 'test'"]),
  ("stsb", ["train={stsb.tsv}"], ["stsb.tsv line 3", "regression label '6'", "[0.0, 5.0]"]),
  ("files", ["train={good.tsv}"], ["config.data.files.validation", ".test"]),
  ("files", ["validation={good.tsv}"], ["config.data.files.train"]),
  (
    "files",
    ["train={one_label.tsv}", "validation={one_label_dev.tsv}"],
    ["one_label.tsv", "one label only"],
  ),
  (
    "files",
    ["train={good.tsv}", "validation={good_dev.tsv}"],
    ["good.tsv", "no column 'text'", "sentence, label"],
  ),
  (
    "files",
    ["train={pairs.csv}", "validation={pairs_dev.csv}", "--config.data.text_fields=()"],
    ["config.data.text_fields"],
  ),
  (
    "files",
    ["train={pairs.csv}", "validation={pairs_dev.csv}", "--config.data.label_names=('x',)"],
    ["config.data.label_names"],
  ),
  (
    "files",
    [
      "train={pairs.csv}",
      "validation={pairs_dev.csv}",
      "--config.data.num_labels=3",
      "--config.data.label_names=('x','y')",
    ],
    ["config.data.num_labels=3"],
  ),
  (
    "files",
    ["train={pairs.csv}", "validation={pairs_dev.csv}", "--config.data.label_field=text"],
    ["config.data.label_field='text'"],
  ),
  (
    "sst2",
    ["train={good.tsv}", "--config.data.train_split=train[:x]"],
    ["config.data.train_split='train[:x]'"],
  ),
  (
    "sst2",
    ["train={good.tsv}", "--config.data.train_examples=-1"],
    ["config.data.train_examples=-1"],
  ),
  (
    "sst2",
    ["train={root}/good*.tsv", "validation={good_dev.tsv}"],
    ["config.data.files.train=", "config.data.files.validation=", "both match", "good_dev.tsv"],
  ),
  (
    "sst2",
    ["train={good.tsv}", "validation={good_dev.tsv}", "--config.data.train_examples=5000"],
    ["config.data.train_examples=5000", "'train' has 2 examples", "at most 2"],
  ),
  ("sst2", ["train={open_quote.csv}"], ["open_quote.csv line 2", "a quote opens", "not closed"]),
  ("sst2", ["train={repeated.tsv}"], ["repeated.tsv", "names the column 'sentence' 2 times"]),
  ("sst2", ["train={tabs.csv}"], ["tabs.csv is tab-separated", "rename it .tsv"]),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_files")
  for name, data in BAD_FILES.items():
    (root / name).write_bytes(data)
  (root / "a_directory").mkdir()
  paths = {name: str(root / name) for name in BAD_FILES}
  return {**paths, "dir": str(root / "a_directory"), "root": str(root)}


def file_flags(args, paths):
  """'split={name}' -> --config.data.files.split=PATH of that bad file; flags as they are."""
  expand = lambda value: re.sub(r"\{([^}]+)\}", lambda m: paths[m.group(1)], value)
  return [expand(a) if a.startswith("--") else "--config.data.files." + expand(a) for a in args]


@pytest.mark.parametrize(
  "kind,args,names", FILE_CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in FILE_CASES]
)
def test_bad_finetuning_files(
  kind, args, names, bad_files, tokenizer_json, data_dir, tmp_path, capsys
):
  workdir = str(tmp_path / "run")
  flags = [f"--config.data.tokenizer={tokenizer_json}", *file_flags(args, bad_files)]
  code, err = run_train(capsys, workdir, *flags, kind=kind, data_dir=data_dir)
  assert_refused(code, err, *names)
  assert_nothing_written(workdir)


# train.py: workdir states and flags.


def test_workdir_that_is_a_file(data_dir, tmp_path, capsys):
  path = tmp_path / "run"
  path.write_text("notes")
  code, err = run_train(capsys, str(path), data_dir=data_dir)
  assert_refused(code, err, f"--workdir={path} is a file")
  assert path.read_text() == "notes"


def test_workdir_under_a_file(data_dir, tmp_path, capsys):
  (tmp_path / "file").write_text("notes")
  workdir = str(tmp_path / "file" / "run")
  code, err = run_train(capsys, workdir, data_dir=data_dir)
  assert_refused(code, err, "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_workdir_that_is_not_writable(data_dir, tmp_path, capsys):
  parent = tmp_path / "ro"
  parent.mkdir(mode=0o555)
  code, err = run_train(capsys, str(parent / "run"), data_dir=data_dir)
  assert_refused(code, err, "not writable")
  assert_nothing_written(str(parent / "run"))


def fake_run(workdir, config, steps=(4,)):
  """A workdir holding `config` as config.json and (empty) checkpoint directories."""
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  for step in steps:
    os.makedirs(os.path.join(workdir, "checkpoints", str(step)))
  return workdir


def test_torn_config_json_with_checkpoints(data_dir, tmp_path, capsys):
  workdir = fake_run(str(tmp_path / "run"), small_config(data_dir))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write('{"task": "ml')
  before = listing(workdir)
  code, err = run_train(capsys, workdir, data_dir=data_dir)
  assert_refused(code, err, "config.json is torn", "Fix:")
  assert listing(workdir) == before


def test_torn_config_json_without_checkpoint_does_not_block(data_dir, tmp_path, capsys):
  """A torn config.json of a run that never checkpointed is rewritten by the next start: here
  the next start's own mistake is what it reports."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"task": "ml')
  code, err = run_train(capsys, str(workdir), "--config.optimizer.lr=-1", data_dir=data_dir)
  assert_refused(code, err, "config.optimizer.lr")
  assert (workdir / "config.json").read_text() == '{"task": "ml'


def test_until_step_at_the_current_step(data_dir, tmp_path, capsys):
  workdir = fake_run(str(tmp_path / "run"), small_config(data_dir))
  before = listing(workdir)
  code, err = run_train(capsys, workdir, "--until_step=4", data_dir=data_dir)
  assert_refused(code, err, "--until_step=4", "already at step 4")
  assert listing(workdir) == before


@pytest.mark.parametrize(
  "argv,name",
  [
    (["train.py", f"--config={CONFIG}:pretrain,x"], "--workdir is required"),
    (["train.py", "--config=configs/nope.py", "--workdir=w"], "no such config file"),
    (["train.py", "--config=configs/pretrain.py:size=huge", "--workdir=w"], "size='huge'"),
    (["train.py", f"--config={CONFIG}:pretrain,x", "--workdir=w", "extra"], "'extra'"),
  ],
)
def test_bad_command_line(argv, name, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  argv = [a.replace("configs/", os.path.join(ROOT, "configs") + "/") for a in argv]
  assert_refused(train.run(argv), capsys.readouterr().err, name)
  assert os.listdir(tmp_path) == []


# eval.py.


@pytest.fixture(scope="module")
def fake_runs(data_dir, tmp_path_factory):
  """config.json and a checkpoint directory at step 4 of an MLM run and of SST-2 and MNLI
  fine-tuning runs: what eval.py checks before restoring anything."""
  root = tmp_path_factory.mktemp("runs")
  return {
    "mlm": fake_run(str(root / "mlm"), small_config(data_dir)),
    "sst2": fake_run(str(root / "sst2"), finetune_config("sst2", data_dir)),
    "mnli": fake_run(str(root / "mnli"), finetune_config("mnli", data_dir)),
  }


EVAL_CASES = [
  ("mlm", ["--split=test"], "--split=test"),
  ("sst2", ["--split=matched"], "its splits are validation"),
  ("mlm", ["--step=7"], "--step=7"),
  ("mlm", ["--step=-1"], "--step=-1"),
  ("mlm", ["--best"], "--best"),
  ("mlm", ["--text=a film"], "--text"),
  ("sst2", ["--fill_mask=a <mask> film"], "--fill_mask"),
  ("sst2", ["--text_pair=a film"], "--text_pair needs --text"),
  ("sst2", ["--text=a", "--fill_mask=b"], "--fill_mask and --text"),
  ("sst2", ["--text=a", "--split=validation"], "--split"),
  ("mnli", ["--text=A man sleeps."], "--text_pair"),
  ("sst2", ["--text=a", "--text_pair=b"], "--text_pair"),
  ("mlm", ["--num_eval_steps=0"], "--num_eval_steps=0"),
  ("mlm", ["--mesh=data=2,foo=1"], "--mesh=data=2,foo=1"),
  ("mlm", ["--mesh=data=3"], "--mesh"),
  ("mlm", ["--bogus"], "--bogus"),
  ("mlm", ["--generate=The json"], "--generate"),
  ("mlm", ["--generate=a", "--fill_mask=a <mask>"], "--generate and --fill_mask"),
  ("mlm", ["--generate=a", "--max_new_tokens=0"], "--max_new_tokens=0"),
  ("mlm", ["--generate=a", "--temperature=-1"], "--temperature=-1"),
  ("mlm", ["--generate=a", "--top_k=-2"], "--top_k=-2"),
  ("mlm", ["--max_new_tokens=5"], "--max_new_tokens applies to --generate"),
  ("sst2", ["--predict_file=x.tsv"], "--predict_file needs --out"),
  ("sst2", ["--out=p.jsonl"], "--out applies to --predict_file"),
  ("mlm", ["--predict_file=x.tsv", "--out=p.jsonl"], "prediction needs a fine-tuning run"),
  ("sst2", ["--predict_file=x.tsv", "--out=/no/dir/p.jsonl"], "/no/dir does not exist"),
  ("sst2", ["--predict_file=x.tsv", "--out=p.jsonl", "--text=a"], "--predict_file and --text"),
  ("sst2", ["--predict_file=x.tsv", "--out=p.jsonl", "--split=validation"], "--split"),
]


@pytest.mark.parametrize("run,argv,name", EVAL_CASES, ids=[" ".join(c[1]) for c in EVAL_CASES])
def test_bad_eval_flags(run, argv, name, fake_runs, capsys):
  workdir = fake_runs[run]
  before = listing(workdir)
  code = eval_cli.run(["eval.py", f"--workdir={workdir}", *argv])
  assert_refused(code, capsys.readouterr().err, name, "eval.py: error:")
  assert listing(workdir) == before


@pytest.mark.parametrize(
  "name,names",
  [
    ("missing.tsv", ["--predict_file='{path}'", "no such file"]),
    ("other_columns.tsv", ["--predict_file", "no column 'sentence'", "text, label"]),
    ("bad_label.tsv", ["--predict_file", "bad_label.tsv line 3", "label '7'"]),
    ("latin1.tsv", ["--predict_file", "not UTF-8"]),
  ],
)
def test_bad_predict_file(name, names, bad_files, fake_runs, tmp_path, capsys):
  """The whole file is read and checked before the checkpoint is restored or --out written."""
  path = bad_files.get(name, str(tmp_path / name))
  out = tmp_path / "predictions.jsonl"
  argv = [f"--workdir={fake_runs['sst2']}", f"--predict_file={path}", f"--out={out}"]
  code = eval_cli.run(["eval.py", *argv])
  assert_refused(code, capsys.readouterr().err, *(n.format(path=path) for n in names))
  assert not out.exists()


def digest(path) -> str:
  """A file's content hash, or a directory's listing with every file's hash: what a user has."""
  import hashlib

  if os.path.isfile(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()
  return str(
    sorted(
      (os.path.relpath(os.path.join(d, f), path), digest(os.path.join(d, f)))
      for d, _, fs in os.walk(path)
      for f in fs
    )
  )


@pytest.mark.parametrize(
  "out,names",
  [
    ("{file}", ["--out={file} is the input --predict_file={file}"]),
    ("{link}", ["is the input --predict_file"]),  # the same file through a symlink
    ("{run}/config.json", ["belongs to the run in {run}"]),
    ("{run}/metrics.jsonl", ["belongs to the run in {run}"]),
  ],
  ids=["input", "symlink to the input", "run config", "run metrics"],
)
def test_predictions_never_overwrite_inputs_or_runs(out, names, fake_runs, tmp_path, capsys):
  """`--out` is refused, before anything is read or written, where it would destroy a file the
  user has: the labelled input itself, or a run's files."""
  data = tmp_path / "dev.tsv"
  data.write_text("sentence\tlabel\na fine film\t1\n")
  os.symlink(data, tmp_path / "link.tsv")
  run = fake_runs["sst2"]
  with open(os.path.join(run, "metrics.jsonl"), "a"):
    pass
  paths = dict(file=str(data), link=str(tmp_path / "link.tsv"), run=os.path.realpath(run))
  before = digest(str(data)), digest(run)
  argv = [f"--workdir={run}", f"--predict_file={data}", f"--out={out.format(**paths)}"]
  code = eval_cli.run(["eval.py", *argv])
  assert_refused(
    code, capsys.readouterr().err, "eval.py: error:", *(n.format(**paths) for n in names)
  )
  assert (digest(str(data)), digest(run)) == before


def test_eval_of_a_workdir_without_a_run(tmp_path, capsys):
  for workdir, name in [(tmp_path / "none", "no such directory"), (tmp_path, "holds no run")]:
    code = eval_cli.run(["eval.py", f"--workdir={workdir}"])
    assert_refused(code, capsys.readouterr().err, name, str(workdir))
  assert os.listdir(tmp_path) == []
  assert_refused(eval_cli.run(["eval.py"]), capsys.readouterr().err, "--workdir is required")


def test_eval_of_a_torn_config_json(data_dir, tmp_path, capsys):
  workdir = fake_run(str(tmp_path / "run"), small_config(data_dir))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write('{"task"')
  code = eval_cli.run(["eval.py", f"--workdir={workdir}"])
  assert_refused(code, capsys.readouterr().err, "config.json is torn")


# export.py.


def test_export_never_overwrites_a_run(fake_runs, tmp_path, capsys):
  """`--out` may not be the exported run, a folder holding it, another run's workdir or a folder of
  one: export writes config.json there, and the run would no longer resume."""
  mlm, sst2 = (os.path.realpath(fake_runs[k]) for k in ("mlm", "sst2"))
  cases = [
    (mlm, "is the input --workdir"),
    (os.path.dirname(mlm), "holds the input --workdir"),
    (sst2, f"--out={sst2} is the run directory"),
    (os.path.join(sst2, "checkpoints"), f"belongs to the run in {sst2}"),
  ]
  for out, name in cases:
    before = digest(sst2), digest(mlm)
    code = export_cli.run(["export.py", f"--workdir={mlm}", f"--out={out}"])
    assert_refused(code, capsys.readouterr().err, name, "export.py: error:")
    assert (digest(sst2), digest(mlm)) == before


@pytest.mark.parametrize(
  "argv,name",
  [
    (["--workdir={empty}", "--out={new}"], "holds no run"),
    (["--workdir={mlm}", "--out={file}"], "--out="),
    (["--workdir={mlm}", "--out={new}", "--step=7"], "--step=7"),
    (["--workdir={mlm}", "--out={new}", "--model_type=gpt"], "--model_type=gpt"),
    (["--workdir={mlm}"], "--out is required"),
  ],
)
def test_bad_export_flags(argv, name, fake_runs, tmp_path, capsys):
  (tmp_path / "file").write_text("x")
  (tmp_path / "empty").mkdir()
  paths = dict(empty=tmp_path / "empty", new=tmp_path / "new", file=tmp_path / "file")
  argv = [a.format(mlm=fake_runs["mlm"], **paths) for a in argv]
  code = export_cli.run(["export.py", *argv])
  assert_refused(code, capsys.readouterr().err, name, "export.py: error:")
  assert not os.path.exists(tmp_path / "new")


def test_old_export_module_path_says_where_the_command_is(capsys):
  """`python -m linformer.convert.export ...` (older docs) exits 2 naming export.py, not 0."""
  import runpy

  with pytest.raises(SystemExit) as exit_:
    runpy.run_module("linformer.convert.export", run_name="__main__")
  assert exit_.value.code == 2
  assert_refused(2, capsys.readouterr().err, "python export.py --workdir=W --out=DIR")


def test_analysis_outputs_never_overwrite_a_run(tmp_path):
  """The analyses' --out is checked like eval.py's: a run's own file is refused, unchanged."""
  run = tmp_path / "runs" / "a"
  run.mkdir(parents=True)
  (run / "config.json").write_text("{}")
  (run / "metrics.jsonl").write_text('{"step": 1, "kind": "eval", "perplexity": 9.0}\n')
  before = digest(str(run))
  out = run_process(
    ["-m", "linformer.analysis.curves", f"--runs={tmp_path}/runs/*", f"--out={run}/metrics.jsonl"]
  )
  assert out.returncode != 0 and "belongs to the run in" in out.stderr, out.stderr[-2000:]
  assert digest(str(run)) == before


# The same, end to end: real processes, their exit status and stderr.


def run_process(argv, env=None):
  return subprocess.run(
    [sys.executable, *argv],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, **(env or {})},
  )


@pytest.mark.slow
def test_processes_exit_2_with_one_line(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = f"--config=tests/cli_config.py:pretrain,{data_dir}"
  cases = [
    (["train.py", config, f"--workdir={workdir}", "--config.optimizer.lr=-1"], "optimizer.lr"),
    (["train.py", config, f"--workdir={workdir}", "--config.model.foo=1"], "'foo'"),
    (["eval.py", f"--workdir={tmp_path}"], "holds no run"),
    (["export.py", f"--workdir={tmp_path}", f"--out={workdir}"], "no run"),
  ]
  for argv, name in cases:
    out = run_process(argv)
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr[-3000:]
    assert name in out.stderr
    assert not os.path.exists(workdir)


@pytest.mark.slow
def test_traceback_on_request(data_dir, tmp_path):
  argv = [
    "train.py",
    f"--config=tests/cli_config.py:pretrain,{data_dir}",
    f"--workdir={tmp_path / 'run'}",
    "--config.optimizer.lr=-1",
  ]
  for extra, env in [(["--traceback"], None), ([], {"LINFORMER_TRACEBACK": "1"})]:
    out = run_process(argv + extra, env)
    assert out.returncode == 2
    assert "Traceback (most recent call last)" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("train.py: error: config.optimizer.lr")
  assert not os.path.exists(tmp_path / "run")


def test_metrics_with_a_torn_last_line_are_read(tmp_path):
  from linformer.training.run_logs import read_metrics

  records = [{"step": 1, "kind": "train", "loss": 2.0}, {"step": 2, "kind": "train", "loss": 1.5}]
  text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 3, "kind": "tr'
  (tmp_path / "metrics.jsonl").write_text(text)
  assert read_metrics(str(tmp_path)) == records
