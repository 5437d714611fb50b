"""benchmarks/profile_step.py (time by kind of work, from a profiler trace) and
benchmarks/peer_throughput.py (the PyTorch peer): the pieces their tables rest on."""

import importlib
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

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
