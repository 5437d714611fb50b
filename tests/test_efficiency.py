"""Measuring (linformer/measure.py, flops.py) and Table 3 (linformer/analysis/table3.py,
table3_report.py and the benchmarks/table3.py CLI): the FLOP model against XLA, the peak FLOP/s
table, the one peak memory, OOM detection, the table layout, and tiny smoke runs of both benchmark
scripts."""

import csv
import dataclasses
import functools
import importlib.util
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from linformer import flops, measure
from linformer.analysis import table3 as t3
from linformer.analysis import table3_report as t3r
from linformer.config import ModelConfig
from linformer.model import Encoder, MaskedLM

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n=64, k=16, layers=1, memory_layers=1, dtype="float32", vocab=1000, impl="xla", batch=1)


def _run_script(name: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
  """A benchmark run as users run it, as a script: the package comes from PYTHONPATH."""
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
  )
  proc = subprocess.run(
    [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
    cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc


def _load_script(name: str):
  spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ---------------------------------------------------------------------------------------------
# The FLOP model.


@pytest.mark.parametrize(
  "model, n, task",
  [
    (dict(attention="full"), 256, "encoder"),
    (dict(sharing="layerwise"), 256, "encoder"),  # inputs projected first
    (dict(sharing="layerwise"), 128, "encoder"),  # an input shorter than max_len
    (dict(sharing="none"), 256, "encoder"),  # per-head E and F
    (dict(sharing="kv", projection="mean_pool"), 256, "encoder"),
    (dict(sharing="headwise"), 256, "mlm"),
    (dict(attention="lsh", lsh_rounds=2, lsh_chunk_len=32), 256, "encoder"),
    (dict(attention="lsh", lsh_rounds=4, lsh_chunk_len=64), 200, "encoder"),  # padded to 256
  ],
)
def test_flop_model_against_xla_cost_analysis(model, n, task):
  """XLA's `flops` counts matmuls as 2 m k n, as the model does, plus every elementwise op
  (LayerNorm, GELU, softmax, bias adds, residuals, masking) that model FLOPs leave out: the
  analytic count is below XLA's, by 4-6% at hidden 256 (measured), so it must lie in
  [0.92, 1.0] of it. Miscounting the attention (n^2 for n k) or the K/V projection (n rows for k)
  moves it past 1.0; dropping a dense layer, below 0.92."""
  cfg = ModelConfig(
    vocab_size=1000,
    max_len=256,
    num_layers=1,
    hidden_size=256,
    num_heads=4,
    mlp_dim=1024,
    k=32,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    **model,
  )
  batch, m = 2, 39
  shape = lambda *s, dtype=jnp.int32: jax.ShapeDtypeStruct(s, dtype)
  inputs = (shape(batch, n), shape(batch, n, dtype=jnp.bool_))
  if task == "mlm":
    module = nnx.eval_shape(lambda: MaskedLM(cfg, rngs=nnx.Rngs(0)))
    inputs += (shape(batch, m),)
  else:
    module = nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0)))
  compiled, _ = measure.compile_forward(module, inputs)
  analytic = batch * sum(flops.forward_flops(cfg, n, task, num_predictions=m).values())
  assert 0.92 <= analytic / measure.compiled_flops(compiled) <= 1.0


def test_train_flops_per_token():
  lin = ModelConfig(vocab_size=8000, max_len=4096, num_layers=2, sharing="layerwise")
  full = dataclasses.replace(lin, attention="full")
  fwd, train = flops.forward_flops(lin, 4096, "mlm"), flops.train_flops(lin, 4096, "mlm")
  assert train == {key: 3 * v for key, v in fwd.items()}
  assert fwd["mlm_head"] == 2 * 615 * 768 * (768 + 8000)  # m = ceil(0.15 * 4096) = 615
  fixed = flops.train_flops(dataclasses.replace(lin, projection="random"), 4096, "mlm")
  assert fixed["seq_proj"] == 2 * fwd["seq_proj"] and fixed["mlp"] == train["mlp"]
  assert sum(train.values()) / 4096 == flops.train_flops_per_token(lin, "mlm", 4096)
  # Linformer's cost per token hardly grows with n; full attention's grows with n.
  per_token = lambda cfg, n: flops.train_flops_per_token(cfg, "mlm", n)
  assert per_token(lin, 4096) / per_token(lin, 512) < 1.15
  assert per_token(full, 4096) / per_token(full, 512) > 1.5
  assert flops.inference_flops_per_token(lin, 512) < per_token(lin, 512) / 3
  cls = flops.forward_flops(lin, 512, "finetune", num_labels=3)
  assert cls["cls_head"] == 2 * 768 * 768 + 2 * 768 * 3 and "mlm_head" not in cls
  with pytest.raises(ValueError, match="task="):
    flops.forward_flops(lin, 512, "translate")


# ---------------------------------------------------------------------------------------------
# Device peak FLOP/s.


@pytest.mark.parametrize(
  "kind, dtype, tflops",
  [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
    ("NVIDIA H100 80GB HBM3", "float32", 494.7),  # JAX's default precision: TF32
    ("NVIDIA H100 PCIe", "bfloat16", 756),
    ("NVIDIA H100 NVL", "bfloat16", 835.5),
    ("NVIDIA H200", "bfloat16", 989.4),
    ("NVIDIA H200 NVL", "bfloat16", 835.5),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312),
    ("NVIDIA A100-PCIE-40GB", "float32", 156),
    ("Tesla V100-SXM2-16GB", "float32", 15.7),  # no TF32: true float32
    ("Tesla V100-SXM2-16GB", "bfloat16", None),  # no bfloat16 hardware
    ("Tesla V100-PCIE-32GB", "float16", 112),
    ("NVIDIA L4", "bfloat16", 121),
    ("TPU v4", "bfloat16", 275),
    ("TPU v4", "float32", 275),  # one bfloat16 pass under the default precision
    ("TPU v5 lite", "bfloat16", 197),
    ("TPU v5e", "bfloat16", 197),
    ("TPU v5", "bfloat16", 459),
    ("TPU v5p", "bfloat16", 459),
    ("TPU v6 lite", "bfloat16", 918),
    ("cpu", "float32", None),
    ("TPU v4 lite", "bfloat16", None),
    ("NVIDIA GeForce RTX 4090", "bfloat16", None),
  ],
)
def test_device_peak_table(kind, dtype, tflops):
  expected = None if tflops is None else pytest.approx(tflops * 1e12)
  assert flops.device_peak_flops(kind, dtype) == expected
  assert flops.device_peak_flops(types.SimpleNamespace(device_kind=kind), dtype) == expected


def test_device_peak_true_float32_and_peak_flops_sources():
  assert flops.device_peak_flops(
    "NVIDIA A100-SXM4-80GB", "float32", default_precision=False
  ) == pytest.approx(19.5e12)
  assert flops.device_peak_flops("TPU v5 lite", "float32", default_precision=False) is None
  h100 = [types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")] * 8
  assert flops.peak_flops("bfloat16", h100) == (pytest.approx(989.4e12), "table:H100 SXM bf16")
  assert flops.peak_flops("float32", h100)[1] == "table:H100 SXM tf32"
  rate, source = flops.peak_flops("float32", jax.devices())  # CPU: measured once, then cached
  assert source == "measured matmul rate" and rate > 1e8
  assert flops.peak_flops("float32", jax.devices()) == (rate, source)


# ---------------------------------------------------------------------------------------------
# Compiled memory and OOM.


def test_one_definition_of_peak_memory():
  """peak = argument + output + temp - alias: a donated argument and the output written into it
  are one buffer, counted once; without donation, both count."""
  x = jnp.ones((256, 1024))  # 1 MiB
  step = lambda x: x * 2 + 1
  donated = measure.compiled_memory(jax.jit(step, donate_argnums=0).lower(x).compile())
  kept = measure.compiled_memory(jax.jit(step).lower(x).compile())
  assert donated["alias"] == measure.MIB and kept["alias"] == 0
  for mem in (donated, kept):
    assert mem["peak"] == mem["argument"] + mem["output"] + mem["temp"] - mem["alias"]
  assert kept["peak"] - donated["peak"] == measure.MIB


def test_oom_detection_on_both_message_kinds():
  xla = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.00GiB.")
  allocator = RuntimeError("INTERNAL: CUDA_ERROR_OUT_OF_MEMORY: out of memory\nmore lines")
  assert all(map(measure.is_oom, (xla, allocator, MemoryError())))
  assert not measure.is_oom(ValueError("RESOURCE_ shapes (2,) and (3,) do not match"))
  assert measure.failure_status(allocator) == (
    "OOM: RuntimeError: INTERNAL: CUDA_ERROR_OUT_OF_MEMORY: out of memory"
  )
  assert measure.failure_status(ValueError("bad\nmore"), limit=2) == "error: ValueError: ba"
  assert measure.over_limit(3 * measure.GIB, 2 * measure.GIB) == (
    "OOM (compiled 3.00 GiB > 2.00 GiB)"
  )
  assert measure.over_limit(measure.GIB, measure.GIB) is None
  assert measure.over_limit(measure.GIB, None) is None


def test_time_interleaved_keeps_times_and_marks_a_failing_cell():
  def oom():
    raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

  order = []
  group = [
    dict(call=lambda: order.append("a") or 0.5),
    dict(call=oom, status="ok"),
    dict(status="error: not compiled"),
    dict(call=lambda: order.append("b") or 0.25),
  ]
  measure.time_interleaved(group, repeats=3)
  assert order == ["a", "b"] * 3  # round-robin
  assert group[0]["median_s"] == 0.5 and group[0]["times"] == [0.5] * 3
  assert group[1]["status"].startswith("OOM: RuntimeError") and "median_s" not in group[1]
  assert group[2] == dict(status="error: not compiled")
  assert not any("call" in r for r in group)


def test_benchmarks_do_not_edit_sys_path():
  for path in (ROOT / "benchmarks").glob("*.py"):
    assert "sys.path" not in path.read_text(), path


# ---------------------------------------------------------------------------------------------
# Table 3.


def test_paper_table_has_the_papers_cells():
  assert len(t3r.PAPER_SPEEDUP) == len(t3r.PAPER_MEMORY) == 2 + 3 + 4 + 5 * 5
  assert all(k < n for n, k in t3r.PAPER_SPEEDUP)
  assert t3r.PAPER_SPEEDUP[(4096, 128)] == 3.4 and t3r.PAPER_MEMORY[(4096, 128)] == 14
  assert t3r.PAPER_SPEEDUP[(65536, 2048)] == 7.9 and t3r.PAPER_MEMORY[(512, 256)] == 1.5


def _rec(model, n, k, ms=None, peak=None, status="ok", batch=1):
  return dict(
    model=model,
    n=n,
    k=k,
    batch=batch,
    ms=ms,
    ms_per_seq=ms and ms / batch,
    peak_bytes=peak,
    temp_bytes=peak and peak // 2,
    status=status,
  )


def test_table_layout_with_paper_numbers_and_marks():
  records = t3r.add_ratios(
    [
      _rec("full", 512, None, ms=30.0, peak=3000),
      _rec("linformer", 512, 128, ms=20.0, peak=1000),
      _rec("linformer", 512, 256, status="OOM (compiled 9.00 GiB > 8.00 GiB)"),
      _rec("full", 1024, None, status="skipped (time): warm-up call 99 s > 60 s"),
      _rec("linformer", 1024, 128, ms=10.0, peak=10),
      _rec("linformer", 1024, 256, status="error: ValueError: bad"),
    ]
  )
  lin = {(r["n"], r["k"]): r for r in records if r["model"] == "linformer"}
  assert lin[(512, 128)]["speedup"] == 1.5 and lin[(512, 128)]["memory_saved"] == 3.0
  assert lin[(512, 128)]["paper_speedup"] == 1.5 and lin[(512, 128)]["paper_memory_saved"] == 1.7
  assert lin[(1024, 128)]["speedup"] is None

  speed = t3r.ratio_table(records, "speedup", t3r.PAPER_SPEEDUP, [512, 1024, 2048], [128, 256, 512])
  assert speed.splitlines() == [
    "| n \\ k | 128 | 256 | 512 |",
    "|---|---|---|---|",
    "| 512 | 1.50 (paper 1.5) | OOM (paper 1.3) | - |",
    "| 1024 | full skipped (time) (paper 1.7) | error (paper 1.6) | not run (paper 1.3) |",
    "| 2048 | not run (paper 2.6) | not run (paper 2.4) | not run (paper 2.1) |",
  ]
  memory = t3r.ratio_table(records, "memory_saved", t3r.PAPER_MEMORY, [512], [128, 256])
  assert memory.splitlines()[-1] == "| 512 | 3.00 (paper 1.7) | OOM (paper 1.5) |"
  assert t3r.ratio_cell(12.345, None, None, {"status": "ok"}) == "12.3"

  meta = dict(
    platform="cpu",
    device="cpu",
    jax=jax.__version__,
    dtype="float32",
    layers=2,
    memory_layers=12,
    vocab=1000,
    impl="xla",
    batch_policy="tokens",
    tokens=4096,
    max_batch=256,
    repeats=3,
    cell_time_limit=60.0,
    isolate=False,
    memory_limit=2**33,
    ns=[512, 1024],
    ks=[128, 256],
  )
  text = t3r.markdown(records, meta)
  assert "batch = max(1, 4096 // n)" in text and "2 layer(s) timed" in text
  assert "memory of the 12-layer model" in text and "vocabulary 1000" in text
  assert "| 512 | 1.50 (paper 1.5) | OOM (paper 1.3) |" in text
  assert "device peak_bytes_in_use" not in text.split("## Speed-up")[1]  # none measured


def test_lsh_records_get_ratios_and_their_own_table():
  """LSH attention's records: ratios against the Transformer at the same n (no paper values),
  a table of n by rounds, rows in the raw table, a line in the settings."""
  lsh = lambda n, rounds, **kw: dict(_rec("lsh", n, None, **kw), rounds=rounds, chunk=64)
  records = t3r.add_ratios(
    [
      _rec("full", 512, None, ms=30.0, peak=3000),
      _rec("linformer", 512, 128, ms=20.0, peak=1000),
      lsh(512, 4, ms=60.0, peak=1500),
      lsh(512, 8, status="OOM (compiled 9.00 GiB > 8.00 GiB)"),
      _rec("full", 1024, None, status="OOM (compiled 9.00 GiB > 8.00 GiB)"),
      lsh(1024, 4, ms=10.0, peak=10),
    ]
  )
  by = {(r["n"], r.get("rounds")): r for r in records if r["model"] == "lsh"}
  assert by[(512, 4)]["speedup"] == 0.5 and by[(512, 4)]["memory_saved"] == 2.0
  assert by[(512, 4)]["paper_speedup"] is None and by[(1024, 4)]["speedup"] is None
  assert t3r.lsh_table(records, "speedup", [512, 1024], [4, 8]).splitlines() == [
    "| n \\ rounds | 4 | 8 |",
    "|---|---|---|",
    "| 512 | 0.50 | OOM |",
    "| 1024 | full OOM | not run |",
  ]
  assert t3r.ratio_table(records, "speedup", {}, [512], [128]).splitlines()[-1] == "| 512 | 1.50 |"
  raw = t3r.raw_table(records)
  assert "| LSH | 512 | 4 rounds | 1 |" in raw and "| Linformer | 512 | 128 | 1 |" in raw
  meta = dict(
    platform="cpu", device="cpu", jax=jax.__version__, dtype="float32", layers=2,
    memory_layers=2, vocab=1000, impl="xla", batch_policy="tokens", tokens=4096, max_batch=256,
    repeats=3, cell_time_limit=60.0, isolate=False, memory_limit=None, ns=[512, 1024],
    ks=[128], lsh_rounds=[4, 8], lsh_chunk=64,
  )  # fmt: skip
  text = t3r.markdown(records, meta)
  assert "LSH (Reformer, not in the paper): 4, 8 hash rounds, chunks of 64" in text
  assert "### Speed-up (Transformer time / LSH time)" in text and "| 512 | 0.50 | OOM |" in text
  specs = t3.specs_for(64, [16, 64], dict(TINY), lsh_rounds=[4], lsh_chunk=128)
  assert [(s["model"], s["k"], s.get("rounds"), s.get("chunk"), s["impl"]) for s in specs] == [
    ("full", None, None, None, "xla"),
    ("linformer", 16, None, None, "xla"),
    ("lsh", None, 4, 64, None),  # chunks of at most n; its own einsums
  ]
  cfg = t3.encoder_config("lsh", 64, None, layers=1, impl="xla", rounds=4, chunk=64)
  assert (cfg.lsh_rounds, cfg.lsh_chunk_len, cfg.attention_impl) == (4, 64, None)


def test_attention_benchmark_keeps_each_measured_n_when_killed(tmp_path, monkeypatch):
  """A long sweep writes its CSV after every n: killed while building the second n, the file
  holds the first n's comparisons (Linformer and LSH against full attention)."""
  att = _load_script("attention")
  real_prepare = att.prepare

  def prepare(component, attention, n, variant, args):
    if n == 64:
      raise KeyboardInterrupt  # the kill, while the second n compiles
    return real_prepare(component, attention, n, variant, args)

  monkeypatch.setattr(att, "prepare", prepare)
  out = tmp_path / "a.csv"
  argv = ["--layer_n=32,64", "--encoder_n=", "--k=8", "--lsh_rounds=1", "--lsh_chunk=8"]
  with pytest.raises(KeyboardInterrupt):
    att.main(argv + ["--repeats=1", f"--out={out}"])
  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert [(r["n"], r["model"], r["k"], r["rounds"]) for r in rows] == [
    ("32", "linformer", "8", ""),
    ("32", "lsh", "", "1"),
  ]
  assert all(
    r["full_status"] == r["model_status"] == "ok" and float(r["model_ms"]) > 0 for r in rows
  )


def test_attention_benchmark_crossover_and_plot(tmp_path):
  """The long-n answer of benchmarks/attention.py: the first n from which a model stays ahead of
  full attention, in time and in memory; a model that fits where full attention does not wins
  there; a win that does not last is no crossover; a plot file is written."""
  att = _load_script("attention")

  def row(n, model, variant, full_ms, model_ms, full_temp, model_temp, full_status="ok"):
    return dict(
      component="layer", n=n, model=model, k=variant if model == "linformer" else None,
      rounds=variant if model == "lsh" else None, full_ms=full_ms, model_ms=model_ms,
      speedup=att.ratio(full_ms, model_ms), full_temp_bytes=full_temp, model_temp_bytes=model_temp,
      temp_ratio=att.ratio(full_temp, model_temp), full_status=full_status, model_status="ok",
    )  # fmt: skip

  oom = "OOM (compiled 30.00 GiB > 20.00 GiB)"
  rows = [
    row(512, "lsh", 4, 10.0, 20.0, 100, 300),
    row(1024, "lsh", 4, 40.0, 35.0, 400, 600),  # faster here, then slower again: not yet
    row(2048, "lsh", 4, 150.0, 160.0, 1600, 1200),
    row(4096, "lsh", 4, 600.0, 300.0, 6400, 2400),
    row(8192, "lsh", 4, None, 600.0, None, 4800, full_status=oom),
    row(512, "linformer", 128, 10.0, 5.0, 100, 50),
    row(1024, "linformer", 128, 40.0, 9.0, 400, 100),
  ]
  got = {c["model"]: c for c in att.crossover(rows)}
  assert (got["lsh 4 rounds"]["time_n"], got["lsh 4 rounds"]["memory_n"]) == (4096, 2048)
  assert (got["linformer k=128"]["time_n"], got["linformer k=128"]["memory_n"]) == (512, 512)
  never = [row(512, "lsh", 8, 10.0, 40.0, 100, 600), row(1024, "lsh", 8, 40.0, 80.0, 400, 900)]
  (c,) = att.crossover(never)
  assert (c["time_n"], c["memory_n"], c["max_n"]) == (None, None, 1024)
  fits = [
    row(4096, "lsh", 2, 600.0, 900.0, 6400, 9000),
    row(8192, "lsh", 2, None, 1800.0, None, 18000, full_status=oom),
  ]
  (c,) = att.crossover(fits)
  assert (c["time_n"], c["memory_n"]) == (8192, 8192)  # only where full attention does not fit
  text = att.crossover_text(rows + never)
  assert "| layer | lsh 4 rounds | 4096 | 2048 |" in text
  assert "| layer | lsh 8 rounds | not up to 1024 | not up to 1024 |" in text
  png = att.plot(rows, tmp_path / "a.png")
  assert png.stat().st_size > 10_000


def test_oom_and_time_marking_on_a_real_cell(monkeypatch):
  spec = dict(TINY, model="full", k=None)
  real_compile = t3.compile_cell
  compile_once = functools.lru_cache(lambda batch: real_compile(spec, batch))  # one compile
  monkeypatch.setattr(t3, "compile_cell", lambda s, batch: compile_once(batch))
  assert t3.prepare(spec, limit=1024, time_limit=None, flop_rate=None)["status"].startswith(
    "OOM (compiled"
  )
  rec = t3.prepare(spec, limit=None, time_limit=10.0, flop_rate=1.0)  # 1 FLOP/s: too slow
  assert rec["status"].startswith("skipped (time): predicted") and "call" not in rec
  rec = t3.prepare(spec, limit=None, time_limit=0.0, flop_rate=None)  # found on the warm-up
  assert rec["status"].startswith("skipped (time): warm-up") and rec["warmup_s"] > 0
  assert t3r.short_status(rec["status"]) == "skipped (time)"


def test_attention_impl_xla_keeps_the_outputs():
  """Naming XLA's implementation explicitly changes nothing (padding at the end)."""
  base = dataclasses.replace(
    t3.encoder_config("full", 32, None, layers=1, vocab=50),
    hidden_size=64,
    num_heads=4,
    mlp_dim=128,
  )
  ids = jnp.arange(64).reshape(2, 32) % 50
  mask = jnp.arange(32)[None, :] < jnp.array([[32], [20]])
  outs = [
    Encoder(dataclasses.replace(base, attention_impl=impl), rngs=nnx.Rngs(0))(ids, mask)
    for impl in (None, "xla")
  ]
  np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The benchmark scripts, tiny.


@pytest.mark.slow
def test_table3_script_smoke_isolated_then_resumed(tmp_path):
  """As a script, each model in its own subprocess; then in process, --resume reuses the CSV."""
  flags = [
    "--preset",
    "cpu",
    "--ns",
    "64",
    "--layers",
    "1",
    "--memory_layers",
    "1",
    "--tokens",
    "64",
    "--repeats",
    "1",
    "--lsh_rounds",
    "2",
    "--out_dir",
    str(tmp_path),
    "--name",
    "t3",
    "--quiet",
  ]
  _run_script("table3", *flags, "--ks", "16,64", "--isolate")
  with (tmp_path / "t3.csv").open() as f:
    rows = list(csv.DictReader(f))
  assert [(r["model"], r["k"], r["rounds"], r["status"]) for r in rows] == [
    ("full", "", "", "ok"),
    ("linformer", "16", "", "ok"),
    ("lsh", "", "2", "ok"),
  ]  # k=64 is not < n: not run
  assert rows[2]["chunk"] == "64" and float(rows[2]["speedup"]) > 0 and rows[2]["impl"] == ""
  lin = rows[1]
  assert float(lin["ms"]) > 0 and float(lin["speedup"]) > 0 and float(lin["memory_saved"]) > 0
  assert lin["impl"] == "xla" and lin["batch"] == "1" and lin["layers"] == "1"
  assert int(lin["peak_bytes"]) == sum(
    int(lin[f"{key}_bytes"]) for key in ("argument", "output", "temp")
  )
  text = (tmp_path / "t3.md").read_text()
  assert "| 64 | " in text and "| - |" in text
  assert (tmp_path / "t3.png").stat().st_size > 10_000
  # --resume reuses the measurements instead of running again (a time limit of 0 would skip).
  assert (
    _load_script("table3").main(flags + ["--ks", "16", "--resume", "--cell_time_limit", "0"]) == 0
  )
  with (tmp_path / "t3.csv").open() as f:
    assert [r["status"] for r in csv.DictReader(f)] == ["ok", "ok", "ok"]


@pytest.mark.slow
def test_train_throughput_script_smoke(tmp_path):
  out = tmp_path / "tt.csv"
  proc = _run_script(
    "train_throughput",
    "--n",
    "64",
    "--attention",
    "linformer",
    "--k",
    "16",
    "--size",
    "tiny",
    "--layers",
    "1",
    "--hidden",
    "32",
    "--heads",
    "2",
    "--mlp",
    "64",
    "--vocab",
    "64",
    "--tokens_per_step",
    "128",
    "--repeats",
    "1",
    "--peak_size",
    "64",
    "--peak_repeats",
    "1",
    "--out",
    str(out),
  )
  assert "| linformer k=16 | 64 | 2 |" in proc.stdout
  with out.open() as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == [
    "attention",
    "n",
    "k",
    "batch",
    "tokens_per_step",
    "layers",
    "hidden",
    "heads",
    "mlp",
    "vocab",
    "sharing",
    "projection",
    "dtype",
    "dropout",
    "step_s",
    "us_per_token",
    "tokens_per_s",
    "model_gflop_per_step",
    "gflop_qo_dense",
    "gflop_kv_dense",
    "gflop_mlp",
    "gflop_seq_proj",
    "gflop_attention",
    "gflop_mlm_head",
    "xla_gflop_per_step",
    "achieved_gflop_s",
    "matmul_peak_gflop_s",
    "mfu",
    "compiled_mib",
    "step_times_s",
    "status",
  ]
  (row,) = rows
  assert row["status"] == "ok" and float(row["mfu"]) > 0 and float(row["compiled_mib"]) > 0
  cfg = ModelConfig(
    vocab_size=64,
    max_len=64,
    num_layers=1,
    hidden_size=32,
    num_heads=2,
    mlp_dim=64,
    k=16,
    sharing="layerwise",
  )
  expected = 2 * sum(flops.train_flops(cfg, 64, "mlm", math.ceil(0.15 * 64)).values()) / 1e9
  assert float(row["model_gflop_per_step"]) == pytest.approx(expected, rel=1e-3)
  assert float(row["model_gflop_per_step"]) < float(row["xla_gflop_per_step"])


@pytest.mark.slow
def test_length_bucket_benchmark_runs_both_ways(tmp_path):
  """benchmarks/length_buckets.py at its smallest: the same batches padded to n and bucketed,
  timed side by side, with the shapes the buckets compiled."""
  import importlib.util

  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "length_buckets.py")
  spec = importlib.util.spec_from_file_location("length_buckets", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "buckets.md"
  argv = ["--data", "sst2", "--n", "64", "--attention", "full", "--size", "tiny", "--batch", "4"]
  assert bench.main([*argv, "--batches", "2", "--rounds", "1", "--out", str(out)]) == 0
  row = [line for line in out.read_text().splitlines() if line.startswith("| sst2")]
  assert len(row) == 1 and "x** |" in row[0]
  shapes = [int(v) for v in row[0].rstrip(" |").rsplit("|", 1)[1].split(",")]
  assert shapes and max(shapes) < 64  # SST-2 lengths never needed the whole n
