"""Table 3 (linformer/analysis/efficiency.py): layout with the paper's numbers, OOM and time
marking, and one real tiny cell measured end to end."""

import csv
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from linformer.analysis import efficiency as ef
from linformer.model import Encoder

TINY = dict(n=64, k=16, layers=1, memory_layers=1, dtype="float32", vocab=1000, impl="xla",
            batch=1)


def test_paper_table_has_the_papers_cells():
  assert len(ef.PAPER_SPEEDUP) == len(ef.PAPER_MEMORY) == 2 + 3 + 4 + 5 * 5
  assert all(k < n for n, k in ef.PAPER_SPEEDUP)
  assert ef.PAPER_SPEEDUP[(4096, 128)] == 3.4 and ef.PAPER_MEMORY[(4096, 128)] == 14
  assert ef.PAPER_SPEEDUP[(65536, 2048)] == 7.9 and ef.PAPER_MEMORY[(512, 256)] == 1.5


def _rec(model, n, k, ms=None, peak=None, status="ok", batch=1):
  return dict(model=model, n=n, k=k, batch=batch, ms=ms, ms_per_seq=ms and ms / batch,
              peak_bytes=peak, temp_bytes=peak and peak // 2, status=status)


def test_table_layout_with_paper_numbers_and_marks():
  records = ef.add_ratios([
      _rec("full", 512, None, ms=30.0, peak=3000),
      _rec("linformer", 512, 128, ms=20.0, peak=1000),
      _rec("linformer", 512, 256, status="OOM (compiled 9.00 GiB > 8.00 GiB)"),
      _rec("full", 1024, None, status="skipped (time): warm-up call 99 s > 60 s"),
      _rec("linformer", 1024, 128, ms=10.0, peak=10),
      _rec("linformer", 1024, 256, status="error: ValueError: bad"),
  ])
  lin = {(r["n"], r["k"]): r for r in records if r["model"] == "linformer"}
  assert lin[(512, 128)]["speedup"] == 1.5 and lin[(512, 128)]["memory_saved"] == 3.0
  assert lin[(512, 128)]["paper_speedup"] == 1.5 and lin[(512, 128)]["paper_memory_saved"] == 1.7
  assert lin[(1024, 128)]["speedup"] is None

  speed = ef.ratio_table(records, "speedup", ef.PAPER_SPEEDUP, [512, 1024, 2048], [128, 256, 512])
  assert speed.splitlines() == [
      "| n \\ k | 128 | 256 | 512 |",
      "|---|---|---|---|",
      "| 512 | 1.50 (paper 1.5) | OOM (paper 1.3) | - |",
      "| 1024 | full skipped (time) (paper 1.7) | error (paper 1.6) | not run (paper 1.3) |",
      "| 2048 | not run (paper 2.6) | not run (paper 2.4) | not run (paper 2.1) |",
  ]
  memory = ef.ratio_table(records, "memory_saved", ef.PAPER_MEMORY, [512], [128, 256])
  assert memory.splitlines()[-1] == "| 512 | 3.00 (paper 1.7) | OOM (paper 1.5) |"
  assert ef.ratio_cell(12.345, None, None, {"status": "ok"}) == "12.3"

  meta = dict(platform="cpu", device="cpu", jax=jax.__version__, dtype="float32", layers=2,
              memory_layers=12, vocab=1000, impl="xla", batch_policy="tokens", tokens=4096,
              max_batch=256, repeats=3, cell_time_limit=60.0, isolate=False,
              memory_limit=2**33, ns=[512, 1024], ks=[128, 256])
  text = ef.markdown(records, meta)
  assert "batch = max(1, 4096 // n)" in text and "2 layer(s) timed" in text
  assert "memory of the 12-layer model" in text and "vocabulary 1000" in text
  assert "| 512 | 1.50 (paper 1.5) | OOM (paper 1.3) |" in text
  assert "device peak_bytes_in_use" not in text.split("## Speed-up")[1]  # none measured


def test_oom_and_time_marking_on_a_real_cell(monkeypatch):
  spec = dict(TINY, model="full", k=None)
  real_compile = ef.compile_cell
  compile_once = functools.lru_cache(lambda batch: real_compile(spec, batch))  # one compile
  monkeypatch.setattr(ef, "compile_cell", lambda s, batch: compile_once(batch))
  assert ef.prepare(spec, limit=1024, time_limit=None, flop_rate=None)["status"].startswith(
      "OOM (compiled")
  rec = ef.prepare(spec, limit=None, time_limit=10.0, flop_rate=1.0)  # 1 FLOP/s: too slow
  assert rec["status"].startswith("skipped (time): predicted") and "call" not in rec
  rec = ef.prepare(spec, limit=None, time_limit=0.0, flop_rate=None)  # found on the warm-up
  assert rec["status"].startswith("skipped (time): warm-up") and rec["warmup_s"] > 0
  assert ef.short_status(rec["status"]) == "skipped (time)"


def test_attention_impl_xla_keeps_the_outputs():
  """Naming XLA's implementation explicitly changes nothing (padding at the end)."""
  base = dataclasses.replace(ef.encoder_config("full", 32, None, layers=1, vocab=50),
                             hidden_size=64, num_heads=4, mlp_dim=128)
  ids = jnp.arange(64).reshape(2, 32) % 50
  mask = jnp.arange(32)[None, :] < jnp.array([[32], [20]])
  outs = [Encoder(dataclasses.replace(base, attention_impl=impl), rngs=nnx.Rngs(0))(ids, mask)
          for impl in (None, "xla")]
  np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)


def test_one_tiny_cell_end_to_end(tmp_path):
  assert ef.main(["--preset", "cpu", "--ns", "64", "--ks", "16,64", "--layers", "1",
                  "--memory_layers", "1", "--tokens", "64", "--repeats", "1",
                  "--out_dir", str(tmp_path), "--name", "t3", "--quiet"]) == 0
  with (tmp_path / "t3.csv").open() as f:
    rows = list(csv.DictReader(f))
  assert [(r["model"], r["k"], r["status"]) for r in rows] == [
      ("full", "", "ok"), ("linformer", "16", "ok")]  # k=64 is not < n: not run
  lin = rows[1]
  assert float(lin["ms"]) > 0 and float(lin["speedup"]) > 0 and float(lin["memory_saved"]) > 0
  assert lin["impl"] == "xla" and lin["batch"] == "1" and lin["layers"] == "1"
  text = (tmp_path / "t3.md").read_text()
  assert "| 64 | " in text and "| - |" in text
  assert (tmp_path / "t3.png").stat().st_size > 10_000
  # --resume reuses the measurements instead of running again.
  ef.main(["--preset", "cpu", "--ns", "64", "--ks", "16", "--layers", "1", "--memory_layers",
           "1", "--tokens", "64", "--repeats", "1", "--out_dir", str(tmp_path), "--name", "t3",
           "--quiet", "--resume", "--cell_time_limit", "0"])
  with (tmp_path / "t3.csv").open() as f:
    assert [r["status"] for r in csv.DictReader(f)] == ["ok", "ok"]
