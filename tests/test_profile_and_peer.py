"""benchmarks/profile_step.py (time by kind of work, from a profiler trace) and
benchmarks/peer_throughput.py (the PyTorch peer): the pieces their tables rest on."""

import importlib
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
  sys.path.append(str(ROOT / "benchmarks"))  # appended: no script shadows another module
profile_step = importlib.import_module("profile_step")


def _step(x, w, key):
  with jax.named_scope("mlp"):
    h = jax.nn.gelu(x @ w, approximate=False)
  with jax.named_scope("dropout"):
    keep = jax.random.bernoulli(key, 0.9, h.shape)
  with jax.named_scope("optimizer"):
    return jnp.where(keep, h, 0.0).sum() + jnp.sqrt(jnp.sum(w * w))


def test_a_trace_is_split_by_scope_and_kind():
  """Each executed operation of a small jitted function lands in the class its code says: the
  matmul of the `mlp` scope, dropout's random bits, the optimizer scope's reduction; the classes
  sum to the traced operation time."""
  args = (jnp.ones((256, 256)), jnp.ones((256, 256)) / 256, jax.random.key(0))
  jitted = jax.jit(_step)
  compiled = jitted.lower(*args).compile()
  compiled(*args).block_until_ready()
  times, wall = profile_step.op_times(compiled, lambda: compiled(*args).block_until_ready(), 2)
  assert times.get("mlp: matmul", 0) > 0
  assert times.get("dropout: random bits", 0) > 0
  assert times.get("optimizer: other", 0) > 0
  assert all(t >= 0 for t in times.values()) and wall > 0

  insts = profile_step.instructions(compiled.as_text())
  classes = {profile_step.classify(name, inst) for name, inst in insts.items()}
  assert not any(c.startswith(("attention", "embeddings")) for c in classes)


def test_a_library_fusion_is_a_matmul_only_when_it_holds_one():
  """XLA:CPU puts reductions into YNNPACK fusions too (LayerNorm's statistics and gradient): those
  are the scope's other work, and only fusions holding a dot count as matmuls."""

  def f(x, w):
    with jax.named_scope("layer_norm"):
      y = x - x.mean(-1, keepdims=True)
    with jax.named_scope("mlp"):
      return (y @ w).sum()

  args = (jnp.ones((256, 256)), jnp.ones((256, 256)))
  insts = profile_step.instructions(jax.jit(jax.grad(f)).lower(*args).compile().as_text())
  classes = {name: profile_step.classify(name, inst) for name, inst in insts.items()}
  fusions = {name: c for name, c in classes.items() if name.startswith("ynn_fusion")}
  reductions = [n for n in fusions if "reduce" in insts[n]["ops"] and "dot" not in insts[n]["ops"]]
  assert reductions, "no reduction in a YNNPACK fusion: this test no longer tests anything"
  assert {fusions[n] for n in reductions} == {"layer_norm: other"}
  assert "mlp: matmul" in fusions.values()


def test_torch_profile_splits_into_matmuls_and_the_rest():
  """The peer's side of the side-by-side: torch's own operator names for its matmul kernels (a
  Linear and a batched product, forward and backward) land in the matmul time, GELU elsewhere."""
  torch = pytest.importorskip("torch")
  peer_throughput = importlib.import_module("peer_throughput")
  lin = torch.nn.Linear(64, 64)
  x = torch.randn(4, 32, 64, requires_grad=True)
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    y = torch.nn.functional.gelu(lin(x))
    (y @ y.transpose(1, 2)).sum().backward()
  ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
  matmul, rest = peer_throughput.split_torch_ops(ops)
  kernels = {k for k in ops if k in peer_throughput.TORCH_MATMULS}
  assert {"aten::bmm"} <= kernels and kernels & {"aten::addmm", "aten::mm"}
  assert matmul == pytest.approx(sum(ops[k] for k in kernels)) and matmul > 0
  assert "aten::gelu" in rest and not kernels & set(rest)
  assert matmul + sum(rest.values()) == pytest.approx(sum(ops.values()))


def test_side_by_side_table_reads_both_profiles():
  """Medians over the interleaved rounds, per side (the middle round of three here)."""
  rounds = [
    dict(step_s=wall, ops_s=wall + 0.1, times={"mlp: matmul": mm, "mlp: other": wall + 0.1 - mm})
    for wall, mm in [(2.0, 1.4), (3.0, 2.0), (1.0, 0.5)]
  ]
  r = dict(flops=140e9, rounds=rounds)
  peers = [
    dict(seconds=s, ops={"aten::mm": 1.2 * s, "aten::bmm": 0.2 * s, "aten::gelu": 0.3, "x": 0.1})
    for s in (1.0, 0.5, 2.0)
  ]
  lines = profile_step.side_by_side(r, peers)
  cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if ln.startswith("|")]
  rows = {c[0]: c[1:] for c in cells}
  assert rows["step, traced (ms)"] == ["2000", "1000"]
  assert rows["matmul time (ms)"] == ["1400", "1400"]
  assert rows["matmul GFLOP/s"] == ["100", "100"]
  assert rows["everything else (ms)"] == ["700", "400"]
  assert "aten::gelu 300, x 100." in lines[-2]


def test_xla_options_variants_parse_and_bad_ones_say_how():
  xla_options = importlib.import_module("xla_options")
  parsed = dict(xla_options.parse_variant(v) for v in xla_options.DEFAULT_VARIANTS)
  assert parsed["default"] == {}
  assert parsed["no_library_fusions"] == {"xla_cpu_experimental_ynn_fusion_type": ""}
  assert parsed["onednn"] == {"xla_cpu_use_onednn": True}
  assert xla_options.parse_variant("a=x:1;y:LIBRARY_FUSION_TYPE_DOT") == (
    "a",
    {"x": "1", "y": "LIBRARY_FUSION_TYPE_DOT"},
  )
  for bad in ("no_equals", "=x:1", "a=x"):
    with pytest.raises(ValueError, match="name=option:value"):
      xla_options.parse_variant(bad)
  assert xla_options.main(["--variant", "a=x"]) == 2  # one line, exit status 2, nothing built


def test_peer_benchmark_without_the_peer_says_how_to_install_it(tmp_path):
  out = subprocess.run(
    [sys.executable, "benchmarks/peer_throughput.py", f"--peer_path={tmp_path}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr
  (line,) = out.stdout.strip().splitlines()
  assert line.startswith(f"peer_throughput.py: skipped: lucidrains' linformer is not in {tmp_path}")
  assert "pip install --no-deps --target=runs/peer linformer==0.2.3" in line
