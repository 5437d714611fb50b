r"""Where the train step's time goes: a JAX profiler trace of the compiled step, by kind of work.

    python benchmarks/profile_step.py                       # the two presets below, ~5 minutes
    python benchmarks/profile_step.py --preset peer --n 1024
    python benchmarks/profile_step.py --preset minilm --n 512 --steps 3

Presets (the shapes the experiments of this project run):
  peer    4 layers, hidden 256, 4 heads, MLP 1024, vocabulary 8192, Linformer k = 128 shared by
          a layer's heads, no dropout, 8192 tokens per step (the PyTorch peer's shapes,
          benchmarks/peer_throughput.py);
  minilm  6 layers, hidden 384, 12 heads, MLP 1536, vocabulary 30522, k = n/4 per head, dropout
          0.1, batch 8 (the uptraining and fine-tuning experiments' all-MiniLM-L6-v2 shapes).

How. The project's train step (`make_trainer`, as `train_throughput.py` builds it, on its
synthetic masked-LM batches) is compiled, run twice, then `--steps` steps run under
`jax.profiler.trace`. Each XLA operation the CPU runtime executed is an event in the trace that
names its HLO instruction (`hlo_op`); the compiled module's HLO text gives that instruction's
opcode, the operations fused into it and its JAX name stack (`metadata.op_name`). The name stack
carries the scopes the code sets (`jax.named_scope`: embeddings, attention, mlp, layer_norm,
dropout, mlm_head, loss, optimizer, metrics, divergence_check), for the backward pass too, and
the primitives (`_bernoulli` for dropout's random bits). Each event is put in the first class of
this list that it matches:

  dropout: random bits   its name stack is inside jax.random (threefry, `_bernoulli`)
  <scope>: matmul        a dot or convolution, or a fusion holding one (XLA:CPU's `ynn_fusion`)
  <scope>: gather/scatter  embedding lookups and their gradient
  <scope>: other         elementwise work, reductions, copies and transposes

with <scope> the innermost of the scopes above in its name stack ("other" outside all). The
times are the events' own durations summed over the traced steps, per step. XLA:CPU runs
independent operations on its threads at once, so the sum of operation times may exceed the step
time; both are printed.

The peer preset is then set beside lucidrains' linformer at the same shapes when it is installed
(`--peer_path`, see peer_throughput.py): its step under `torch.profiler`, each aten operator's own
time, split into torch's matmul kernels and the rest, in `--rounds` rounds interleaved with the
project's traces (medians: the load of a shared machine moves both alike). The two profilers
count differently (XLA's operations against torch's operators with their dispatch), so the table
compares totals: matmul time, its rate in the project's model FLOPs, and everything else.
Written to benchmarks/results/profile_step_<platform>.md.
"""

from __future__ import annotations

import argparse
import collections
import glob
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from peer_throughput import PROJECT_FLAGS, Peer, peer_missing, split_torch_ops
from peer_throughput import TOKENS_PER_STEP as PEER_TOKENS
from train_throughput import SyntheticMLMTask, make_config
from train_throughput import parse_args as throughput_args

from linformer.flops import train_flops
from linformer.measure import write_report
from linformer.training import partitioning
from linformer.training.trainer import make_trainer

SCOPES = (
  "embeddings",
  "attention",
  "mlp",
  "layer_norm",
  "dropout",
  "mlm_head",
  "loss",
  "optimizer",
  "metrics",
  "divergence_check",
)
RANDOM = ("_bernoulli", "_uniform", "threefry", "random_bits", "rng_bit_generator")
MATMUL = ("dot", "convolution")
GATHER = ("gather", "scatter", "dynamic-slice", "dynamic-update-slice")

PRESETS = {
  "peer": PROJECT_FLAGS,
  "minilm": (
    "--size small --layers 6 --hidden 384 --heads 12 --mlp 1536 --vocab 30522 "
    "--sharing none --dropout 0.1"
  ),
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
  )
  p.add_argument("--preset", default="peer,minilm", help="presets to profile, comma separated")
  p.add_argument("--n", default=None, help="sequence lengths; default peer 1024, minilm 256,512")
  p.add_argument("--steps", type=int, default=3, help="steps traced")
  p.add_argument(
    "--rounds", type=int, default=3, help="peer preset beside the peer: interleaved traces"
  )
  p.add_argument(
    "--scan_layers",
    choices=["auto", "on", "off"],
    default="auto",
    help="config.model.scan_layers: auto is the default (None: scanned above 4 layers)",
  )
  p.add_argument(
    "--peer_path",
    default=str(Path(__file__).resolve().parents[1] / "runs" / "peer"),
    help="lucidrains' linformer (peer_throughput.py): the peer preset is compared with it",
  )
  p.add_argument("--out", default=None, help="markdown; None: results/profile_step_<platform>.md")
  return p.parse_args(argv)


# The compiled program's instructions.


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"(?:^|\s)([a-z][\w\-]*)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def instructions(hlo_text: str) -> dict[str, dict]:
  """{instruction name: opcode, the opcodes of everything it calls (fusions), its name stack}."""
  computations, insts, current = collections.defaultdict(set), {}, None
  for line in hlo_text.splitlines():
    if (m := _COMPUTATION.match(line)) and not line.startswith(" "):
      current = m.group(1)
      continue
    if (m := _INSTRUCTION.match(line)) is None or current is None:
      continue
    name, rest = m.groups()
    opcode = (_OPCODE.search(rest) or [None, "?"])[1]
    computations[current].add(opcode)
    op_name = _OP_NAME.search(rest)
    insts[name] = dict(
      opcode=opcode, calls=_CALLS.findall(rest), op_name=op_name.group(1) if op_name else ""
    )

  def called(names, seen):
    ops = set()
    for c in names:
      if c not in seen:
        seen.add(c)
        ops |= computations.get(c, set())
    return ops

  for inst in insts.values():
    inst["ops"] = {inst["opcode"]} | called(inst["calls"], set())
  return insts


def classify(name: str, inst: dict | None) -> str:
  if inst is None:
    return "other: not in the program text"
  stack = inst["op_name"]
  if any(r in stack for r in RANDOM) or "rng" in inst["opcode"]:
    return "dropout: random bits"
  scope = "other"
  best = -1
  for s in SCOPES:
    for m in re.finditer(rf"(?:^|[/(]){s}(?:[/)]|$)", stack):
      if m.start() > best:
        scope, best = s, m.start()
  ops = inst["ops"]
  if ops & set(MATMUL):  # a YNNPACK fusion is a matmul only if it holds one (some are reductions)
    kind = "matmul"
  elif ops & set(GATHER):
    kind = "gather/scatter"
  else:
    kind = "other"
  return f"{scope}: {kind}"


# Tracing.


def build(preset: str, n: int, scan: str = "auto", compiler_options: dict | None = None):
  args = throughput_args(PRESETS[preset].split())
  attention = "linformer"
  if preset == "minilm":
    args.k, args.tokens_per_step = n // 4, 8 * n
  config = make_config(attention, n, args)
  config.model.scan_layers = {"auto": None, "on": True, "off": False}[scan]
  mesh = partitioning.make_mesh(config.mesh)
  task = SyntheticMLMTask(config, args.vocab)
  task.setup("", per_host_batch_size=config.batch_size)
  trainer = make_trainer(config, task, mesh)
  batches = [partitioning.global_batch(b, mesh) for b in task.batches]
  lowered = trainer.train_step.lower(trainer.abstract_state(), batches[0])
  compiled = lowered.compile(compiler_options=compiler_options or None)
  state = jax.jit(trainer.init_state, out_shardings=trainer.state_sharding)()
  cfg = task.model_config()
  m = task.batches[0]["mlm_positions"].shape[1]
  flops = config.batch_size * sum(train_flops(cfg, n, "mlm", num_predictions=m).values())
  return compiled, state, batches, cfg, config.batch_size, flops


def op_times(compiled, run, steps: int) -> tuple[dict[str, float], float]:
  """({class: seconds per call}, wall seconds per call) of `steps` calls of `run()` (each
  ending with block_until_ready) of the program `compiled`, traced by the JAX profiler."""
  with tempfile.TemporaryDirectory() as trace_dir:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      for _ in range(steps):
        run()
    wall = (time.perf_counter() - start) / steps
    (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    data = jax.profiler.ProfileData.from_file(path)
  text = compiled.as_text()
  insts = instructions(text)
  module = re.search(r"HloModule (\S+?),", text).group(1)
  times = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if stats.get("hlo_module") == module and "hlo_op" in stats:
          op = stats["hlo_op"]
          times[classify(op, insts.get(op))] += event.duration_ns / 1e9 / steps
  return dict(times), wall


def profile(preset: str, n: int, steps: int, scan: str = "auto", rounds: int = 1, alongside=None):
  """The step traced `rounds` times (`steps` steps each), `alongside()` called after each trace
  (the peer's profile, so both sides see the same load); the report's table is the round of
  median step time, every round is kept for the side-by-side."""
  compiled, state, batches, cfg, batch, flops = build(preset, n, scan)
  holder = {"state": state, "i": 0}

  def run():
    batch_i = batches[holder["i"] % len(batches)]
    holder["state"], metrics = compiled(holder["state"], batch_i)
    holder["i"] += 1
    jax.block_until_ready((holder["state"], metrics))

  for _ in range(2):  # warm-up
    run()
  traces, others = [], []
  for _ in range(rounds):
    times, wall = op_times(compiled, run, steps)
    traces.append(dict(step_s=wall, ops_s=sum(times.values()), times=times))
    if alongside is not None:
      others.append(alongside())
  median = sorted(traces, key=lambda t: t["step_s"])[len(traces) // 2]
  return dict(
    preset=preset, n=n, batch=batch, cfg=cfg, flops=flops, rounds=traces, alongside=others, **median
  )


def table(r: dict, rate: float) -> list[str]:
  c = r["cfg"]
  head = (
    f"### {r['preset']}: n = {r['n']}, batch {r['batch']} ({c.num_layers} layers, hidden "
    f"{c.hidden_size}, {c.num_heads} heads, MLP {c.mlp_dim}, vocabulary {c.vocab_size}, "
    f"k = {c.k}, sharing {c.sharing}, dropout {c.dropout_rate}, layers "
    f"{'scanned' if c.scanned else 'unrolled'})"
  )
  tokens = r["n"] * r["batch"]
  mfu = r["flops"] / r["step_s"] / rate
  lines = [
    head,
    "",
    f"Step {r['step_s']:.3f} s ({tokens / r['step_s']:,.0f} tokens/s); operations {r['ops_s']:.3f} "
    f"s summed over XLA's threads; model matmul FLOPs {r['flops'] / 1e9:.1f} G, "
    f"{r['flops'] / rate:.3f} s at the measured matmul rate (MFU {100 * mfu:.0f}%).",
    "",
    "| kind | ms per step | share of operation time |",
    "|---|---|---|",
  ]
  for kind, s in sorted(r["times"].items(), key=lambda kv: -kv[1]):
    lines.append(f"| {kind} | {1e3 * s:.1f} | {100 * s / r['ops_s']:.1f}% |")
  matmul = sum(s for k, s in r["times"].items() if k.endswith(": matmul"))
  lines += ["", f"Matmuls {100 * matmul / r['ops_s']:.0f}% of the operation time.", ""]
  return lines


def side_by_side(r: dict, peer_rounds: list[dict]) -> list[str]:
  """Where the project's step and the peer's differ, matmul time against everything else:
  medians over the interleaved rounds of each side."""
  ours = [sum(s for k, s in t["times"].items() if k.endswith(": matmul")) for t in r["rounds"]]
  ours_rest = [t["ops_s"] - mm for t, mm in zip(r["rounds"], ours)]
  split = [split_torch_ops(p["ops"]) for p in peer_rounds]
  theirs, theirs_rest = [mm for mm, _ in split], [sum(rest.values()) for _, rest in split]
  med = statistics.median
  ms = lambda values: f"{1e3 * med(values):.0f}"
  gflops = lambda values: f"{r['flops'] / med(values) / 1e9:.0f}"
  names = set().union(*(rest for _, rest in split))
  per_op = {name: med([rest.get(name, 0.0) for _, rest in split]) for name in names}
  top = sorted(per_op.items(), key=lambda kv: -kv[1])[:8]
  return [
    f"Side by side with lucidrains' linformer (`peer_throughput.py`) at the same shapes: "
    f"{len(peer_rounds)} rounds, each tracing the project's steps under the JAX profiler and "
    "then the peer's under `torch.profiler` (each aten operator's own time), medians over the "
    "rounds; GFLOP/s are the project's model FLOPs over each side's matmul time:",
    "",
    "| per step | project | peer |",
    "|---|---|---|",
    f"| step, traced (ms) | {ms([t['step_s'] for t in r['rounds']])} | "
    f"{ms([p['seconds'] for p in peer_rounds])} |",
    f"| matmul time (ms) | {ms(ours)} | {ms(theirs)} |",
    f"| matmul GFLOP/s | {gflops(ours)} | {gflops(theirs)} |",
    f"| everything else (ms) | {ms(ours_rest)} | {ms(theirs_rest)} |",
    "",
    "The peer's largest other operators (ms per step): "
    + ", ".join(f"{name} {1e3 * s:.0f}" for name, s in top)
    + ".",
    "",
  ]


def profile_beside_peer(n: int, args) -> dict:
  """The peer preset traced in `args.rounds` rounds, the peer's process (built and warmed up
  first) profiled after each."""
  peer = Peer(args.peer_path)
  try:
    peer.ask(op="build", n=n, batch=PEER_TOKENS // n, masked=math.ceil(0.15 * n))
    for _ in range(2):
      peer.ask(op="step")
    peer_profile = lambda: peer.ask(op="profile", steps=args.steps)
    return profile("peer", n, args.steps, args.scan_layers, args.rounds, peer_profile)
  finally:
    peer.close()


def main(argv=None) -> int:
  from linformer.flops import matmul_rate

  args = parse_args(argv)
  rate = matmul_rate(2048, 5)
  print(f"float32 matmul rate: {rate / 1e9:.1f} GFLOP/s", flush=True)
  lines = [
    f"# Train step profile on {jax.devices()[0].platform} ({jax.devices()[0].device_kind})",
    "",
    f"`benchmarks/profile_step.py`; float32 matmul rate measured in the run: {rate / 1e9:.1f} "
    "GFLOP/s.",
    "",
  ]
  for preset in args.preset.split(","):
    default = "1024" if preset == "peer" else "256,512"
    for n in [int(v) for v in (args.n or default).split(",")]:
      print(f"{preset}, n = {n}: compiling and tracing ...", flush=True)
      reason = peer_missing(args.peer_path) if preset == "peer" else "not the peer preset"
      if reason is None:
        print(f"peer, n = {n}: the PyTorch peer under torch.profiler, interleaved ...", flush=True)
        r = profile_beside_peer(n, args)
        lines += table(r, rate) + side_by_side(r, r["alongside"])
      else:
        lines += table(profile(preset, n, args.steps, args.scan_layers), rate)
        if preset == "peer":
          lines += [f"(No side-by-side with the PyTorch peer: {reason}.)", ""]
  text = "\n".join(lines)
  platform = jax.devices()[0].platform
  write_report(text, args.out or Path(__file__).parent / "results" / f"profile_step_{platform}.md")
  return 0


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  sys.exit(main())
