"""Sweeps expand to the paper's variants; Figure 3 curves are drawn from metrics files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sweep
from linformer.analysis import curves
from linformer.config import ATTENTION_KINDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_figure3_sweeps_expand_to_the_papers_variants():
  fig3a = sweep.variants("configs/pretrain.py:sweep=fig3a,size=tiny,steps=50")
  assert [name for name, _, _ in fig3a] == [
    "n=512,attention=full",
    "n=512,k=64",
    "n=512,k=128",
    "n=512,k=256",
  ]
  assert fig3a[1][1] == "configs/pretrain.py:size=tiny,steps=50,n=512,k=64"
  fig3c = sweep.variants("configs/pretrain.py:sweep=fig3c")
  assert [cfg.rsplit("sharing=", 1)[1] for _, cfg, _ in fig3c] == [
    "none",
    "headwise",
    "kv",
    "layerwise",
  ]
  fig3 = [name for name, _, _ in sweep.variants("configs/pretrain.py:sweep=fig3,size=mini")]
  assert fig3[:3] == [
    "n=512,attention=full",
    "n=512,k=128,sharing=none",
    "n=512,k=128,sharing=layerwise",
  ]
  as_3a = {"n=512,attention=full"} | {f"n=512,k={k},sharing=none" for k in (64, 128, 256)}
  as_3c = {f"n=512,k=128,sharing={s}" for s in ("none", "headwise", "kv", "layerwise")}
  assert sorted(fig3) == sorted(as_3a | as_3c)  # 3a and 3c, the shared row once
  fig3d = sweep.variants("configs/pretrain.py:sweep=fig3d")
  assert [cfg for _, cfg, _ in fig3d][-1].endswith("n=4096,k=256")


def test_finetune_sweep_is_the_roberta_grid():
  grid = sweep.variants("configs/finetune.py:dataset=sst2")
  assert len(grid) == 6
  assert grid[0][2] == ["--config.optimizer.lr=1e-05", "--config.batch_size=16"]


def test_attention_kinds_are_sweepable_for_pretraining_and_listops():
  """sweep=attention: the same run with each attention kind, the other keys kept."""
  pre = sweep.variants("configs/pretrain.py:sweep=attention,size=tiny,steps=50")
  assert [cfg for _, cfg, _ in pre] == [
    f"configs/pretrain.py:size=tiny,steps=50,attention={kind}" for kind in ATTENTION_KINDS
  ]
  assert ATTENTION_KINDS == ("linformer", "full", "lsh")
  listops = sweep.variants("configs/finetune.py:dataset=listops,n=512,sweep=attention")
  assert [(name, extra) for name, _, extra in listops] == [
    (f"attention={kind}", []) for kind in ATTENTION_KINDS
  ]
  assert listops[2][1] == "configs/finetune.py:dataset=listops,n=512,attention=lsh"
  with pytest.raises(ValueError, match="sweep='fig3a'; use glue or attention"):
    sweep.variants("configs/finetune.py:dataset=listops,sweep=fig3a")


def test_dry_run_prints_one_command_per_variant(tmp_path):
  out = (
    subprocess.run(
      [
        sys.executable,
        "sweep.py",
        "--config=configs/pretrain.py:sweep=fig3b",
        f"--workdir={tmp_path}",
        "--dry_run",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=True,
    )
    .stdout.strip()
    .splitlines()
  )
  assert len(out) == 4 and all(line.startswith("python train.py --config=") for line in out)


def test_unknown_sweep_is_an_error():
  with pytest.raises(ValueError, match="sweep='fig9'"):
    sweep.variants("configs/pretrain.py:sweep=fig9")


def _fake_run(path, model, ppl):
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"model": model}, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for step, value in zip((100, 200), ppl):
      f.write(json.dumps({"step": step, "kind": "eval", "perplexity": value}) + "\n")


def test_curves_plot_and_table(tmp_path):
  _fake_run(
    tmp_path / "a", {"attention": "full", "max_len": 512, "k": 128, "sharing": "none"}, (50.0, 20.0)
  )
  _fake_run(
    tmp_path / "b",
    {"attention": "linformer", "max_len": 512, "k": 64, "sharing": "kv"},
    (60.0, 25.0),
  )
  lsh = {"attention": "lsh", "max_len": 512, "k": 128, "sharing": "none", "lsh_rounds": 8}
  _fake_run(tmp_path / "c", {**lsh, "lsh_buckets": None, "lsh_chunk_len": 64}, (70.0, 30.0))
  data = curves.curves([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")])
  assert data == {
    "Transformer, n=512": ([100, 200], [50.0, 20.0]),
    "Linformer n=512, k=64, kv": ([100, 200], [60.0, 25.0]),
    "LSH (Reformer) n=512, 8 rounds, chunk 64, 16 buckets": ([100, 200], [70.0, 30.0]),
  }
  curves.plot(data, str(tmp_path / "fig.png"), "perplexity")
  assert os.path.getsize(tmp_path / "fig.png") > 1000
  assert "| Linformer n=512, k=64, kv | 200 | 25.0 |" in curves.table(data, "perplexity")


def test_runs_that_differ_only_in_learning_rate_keep_both_curves(tmp_path):
  model = {"attention": "full", "max_len": 256, "k": 64, "sharing": "none"}
  for name, lr, ppl in (("slow", 1e-4, (90.0, 80.0)), ("fast", 3e-4, (70.0, 60.0))):
    _fake_run(tmp_path / name, model, ppl)
    config = json.loads((tmp_path / name / "config.json").read_text())
    (tmp_path / name / "config.json").write_text(json.dumps({**config, "optimizer": {"lr": lr}}))
  data = curves.curves([str(tmp_path / "slow"), str(tmp_path / "fast")])
  assert data == {
    "Transformer, n=256, lr 0.0001": ([100, 200], [90.0, 80.0]),
    "Transformer, n=256, lr 0.0003": ([100, 200], [70.0, 60.0]),
  }


def test_runs_from_different_checkpoints_are_labelled_by_their_source(tmp_path):
  model = {"attention": "linformer", "max_len": 256, "k": 64, "sharing": "none"}
  runs = (("a", "runs/head_hf", (90.0, 80.0)), ("b", "runs/full_hf/", (70.0, 60.0)))
  for name, init, ppl in runs:
    _fake_run(tmp_path / name, model, ppl)
    config = json.loads((tmp_path / name / "config.json").read_text())
    config.update(init_from=init, optimizer={"lr": 1e-4})
    (tmp_path / name / "config.json").write_text(json.dumps(config))
  _fake_run(tmp_path / "full", {**model, "attention": "full"}, (50.0, 40.0))
  data = curves.curves([str(tmp_path / n) for n in ("a", "b", "full")])
  assert sorted(data) == [
    "Linformer n=256, k=64, from full_hf",
    "Linformer n=256, k=64, from head_hf",
    "Transformer, n=256",  # a label no other run shares keeps no source
  ]


def test_table2_takes_the_best_of_the_grid(tmp_path):
  from linformer.analysis import table2

  def run(name, dataset, model, accs, key="dataset"):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"data": {key: dataset}, "model": model}))
    split = "test" if dataset == "imdb" else "validation"
    (d / "results.json").write_text(
      json.dumps({"evaluations": [{"step": i, f"{split}/accuracy": a} for i, a in enumerate(accs)]})
    )
    return str(d)

  lin = {"attention": "linformer", "max_len": 512, "k": 128, "sharing": "layerwise"}
  runs = [
    run("a", "sst2", lin, [0.80, 0.85]),
    run("b", "sst2", lin, [0.90]),
    run("c", "imdb", lin, [0.70], key="task"),
  ]  # a run made before the rename
  table = table2.collect(runs)
  assert table == {(512, "k=128, shared kv, layer"): {"sst2": 90.0, "imdb": 70.0}}
  text = table2.markdown(table)
  assert (
    "| 512 | k=128, shared kv, layer | 90.0 / 93.2 | 70.0 / 93.8 | - / 90.1 | - / 90.2 |" in text
  )


def test_table2_per_run_rows(tmp_path):
  """A run's budget, summed train time, last and best accuracy, and the paper's number at the
  same k / n and sharing (n = 128, k = 32 sits beside the paper's n = 512, k = 128)."""
  from linformer.analysis import table2

  def run(name, model, data, accs):
    d = tmp_path / name
    d.mkdir()
    config = {"task": "finetune", "batch_size": 32, "data": data, "model": model}
    (d / "config.json").write_text(json.dumps(config))
    evals = [{"step": 100 * (i + 1), "validation/accuracy": a} for i, a in enumerate(accs)]
    best = max(evals, key=lambda e: e["validation/accuracy"])
    results = {"main_metric": "validation/accuracy", "best": best, "evaluations": evals}
    (d / "results.json").write_text(json.dumps(results))
    lines = [{"step": s, "kind": "train", "loss": 1.0, "seconds": 90.0} for s in (100, 200)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(d)

  sst2 = {"dataset": "sst2", "train_examples": 0, "eval_examples": 0}
  lin = {"attention": "linformer", "max_len": 128, "k": 32, "sharing": "layerwise"}
  full = {"attention": "full", "max_len": 128, "k": 32, "sharing": "none"}
  rows = [
    table2.run_row(run("lin", lin, sst2, [0.85, 0.83])),
    table2.run_row(run("full", full, {**sst2, "train_examples": 1000}, [0.8, 0.9])),
  ]
  assert rows[0]["paper"] == 93.2 and rows[1]["paper"] == 93.1
  assert (rows[0]["last"], rows[0]["best"], rows[0]["minutes"]) == pytest.approx((83, 85, 3))
  text = table2.per_run_markdown(rows)
  assert text.splitlines()[2] == (
    "| sst2 | full attention | 128 | 200 x 32 | 1000 | all (validation) | 3 min "
    "| 90.0 / 90.0 | 93.1 |"
  )
  assert table2.run_row(str(tmp_path / "nothing")) is None


def test_recovery_table_reads_step_zero_the_freeze_and_the_end(tmp_path):
  run = tmp_path / "up"
  os.makedirs(run)
  model = {
    "attention": "linformer",
    "max_len": 256,
    "k": 64,
    "sharing": "none",
    "projection_init": "pool",
  }
  with open(run / "config.json", "w") as f:
    json.dump({"model": model, "freeze_pretrained_steps": 30}, f)
  with open(run / "metrics.jsonl", "w") as f:
    for step, ppl in ((0, 5e4), (30, 800.0), (150, 480.0), (300, 380.0)):
      f.write(json.dumps({"step": step, "kind": "eval", "perplexity": ppl, "accuracy": 0.1}) + "\n")
  (run / "results.json").write_text("{}")
  table = curves.recovery_table([str(run)], at=120)
  assert (
    "| Linformer n=256, k=64, E/F init pool | 50000.0 | 800.0 (30) | 480.0 | 380.0 (300) | 0.100 "
    "| — |" in table
  )


def test_recovery_table_compares_at_equal_mlm_steps_after_transfer(tmp_path):
  run = tmp_path / "transfer"
  os.makedirs(run)
  model = {"attention": "linformer", "max_len": 256, "k": 64, "sharing": "none"}
  with open(run / "config.json", "w") as f:
    json.dump({"model": model, "transfer_steps": 100, "freeze_pretrained_steps": 0}, f)
  errors = lambda e: {
    "attention_error": e,
    "attention_error/layer0": e - 0.1,
    "attention_error/layer1": e + 0.1,
  }
  with open(run / "metrics.jsonl", "w") as f:
    for step, ppl, extra in (
      (0, 300.0, errors(0.5)),
      (100, 250.0, errors(0.2)),
      (250, 200.0, errors(0.3)),
      (400, 150.0, errors(0.3)),
    ):
      record = {"step": step, "kind": "eval", "perplexity": ppl, "accuracy": 0.2, **extra}
      f.write(json.dumps(record) + "\n")
    for step, kind in ((50, "transfer"), (100, "transfer"), (250, "train"), (400, "train")):
      f.write(json.dumps({"step": step, "kind": kind, "loss": 1.0, "seconds": 45.0}) + "\n")
  (run / "results.json").write_text("{}")
  table = curves.recovery_table([str(run)], at=150)
  assert (
    "| 300.0 | 250.0 (100) | 200.0 | 150.0 (400) | 0.200 | 0.200 (from 0.500): 0.10 / 0.30 "
    "| 3.0 min |" in table  # 4 windows of 45 s, transfer and MLM
  )


def test_bag_of_words_baseline_reads_the_files_as_fine_tuning_does(tmp_path):
  """The Table 2 baseline reads a dataset's own columns (IMDB's JSON lines, markup stripped)
  and scores a held-out file: words that decide the label make it exact."""
  from linformer.analysis import bow_baseline

  rng = np.random.default_rng(0)
  lines = []
  for i in range(60):
    label = i % 2
    words = rng.choice(["plot", "actor", "scene", "music", "film"], 6).tolist()
    words.insert(3, "wonderful<br />" if label else "dreadful<br />")
    lines.append(json.dumps({"text": " ".join(words), "label": label, "id": i}))
  (tmp_path / "train.jsonl").write_text("\n".join(lines[:40]) + "\n")
  (tmp_path / "test.jsonl").write_text("\n".join(lines[40:]) + "\n")
  train = bow_baseline.read("imdb", str(tmp_path / "train.jsonl"), strip=True)
  assert len(train[0]) == 40 and "<br />" not in train[0][0] and set(train[1]) == {0, 1}
  scores = bow_baseline.fit_and_score(
    train, bow_baseline.read("imdb", str(tmp_path / "test.jsonl"), True)
  )
  assert scores["accuracy"] == 1.0 and scores["eval_examples"] == 20
