r"""The project's train step against the most used PyTorch Linformer, lucidrains' `linformer`,
at the same shapes and work, interleaved in one run; prints tokens/s and the ratio.

    pip install --no-deps --target=runs/peer linformer==0.2.3   # the peer (needs torch)
    PYTHONPATH=. python benchmarks/peer_throughput.py            # n = 1024 and 4096, ~5 minutes
    PYTHONPATH=. python benchmarks/peer_throughput.py --n 1024 --rounds 7

The peer's package is also called `linformer`, so it is installed into a folder of its own
(`--peer_path`, default runs/peer, which git ignores) and runs in a subprocess whose import path
holds that folder and not this project. Without it (or without torch) the script prints one line
saying how to install it and exits 0.

Shapes and work, the same on both sides: 4 layers, hidden 256, 4 heads, MLP 1024, vocabulary 8192,
Linformer k = 128 with E and F shared by the heads of a layer (the project's `sharing=headwise`,
the peer's per-layer `proj_k` / `proj_v`), no dropout, float32, AdamW, the MLM logits and loss at
the 15% masked positions only (the peer's `to_logits` applied to those positions, as the
project's head does), 8192 tokens per step (batch 8 at n = 1024, 2 at 4096). The models differ
where the two implementations do: the project is RoBERTa (post-LN, biases on q/k/v, an MLM head
with a dense layer and LayerNorm, tied decoder), the peer pre-LN with a plain linear decoder;
their matmul FLOPs differ by under 2%.

Timing: both steps are built and warmed up (two steps each), then `--rounds` rounds each time one
project step and one peer step, so load from other processes hits both alike; medians are
reported. The project's step is `train_throughput.py`'s (the jitted `make_trainer` step on
synthetic batches); the peer's is forward, loss, backward and `torch.optim.AdamW.step` on
random batches of the same shape. MFU for both is the project's model FLOPs
(`linformer.flops.train_flops`) over the float32 matmul rate measured in the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS, HIDDEN, HEADS, MLP, VOCAB, K = 4, 256, 4, 1024, 8192, 128
TOKENS_PER_STEP = 8192
# The project's side, as train_throughput.py flags (profile_step.py's 'peer' preset too).
PROJECT_FLAGS = (
  f"--size small --layers {LAYERS} --hidden {HIDDEN} --heads {HEADS} --mlp {MLP} "
  f"--vocab {VOCAB} --k {K} --sharing headwise --dropout 0 --tokens_per_step {TOKENS_PER_STEP}"
)
INSTALL = "pip install --no-deps --target=runs/peer linformer==0.2.3"


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
  )
  p.add_argument("--n", default="1024,4096", help="sequence lengths, comma separated")
  p.add_argument("--tokens_per_step", type=int, default=TOKENS_PER_STEP, help="batch = tokens / n")
  p.add_argument("--rounds", type=int, default=5, help="timed steps per side (median)")
  p.add_argument("--peer_path", default=str(ROOT / "runs" / "peer"), help="the peer's folder")
  p.add_argument(
    "--out", default=None, help="markdown; None: results/peer_throughput_<platform>.md"
  )
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # the peer's process
  return p.parse_args(argv)


# The peer's process: reads one JSON command a line, answers one JSON line.


def worker() -> None:
  import torch
  import torch.nn.functional as F

  from linformer import LinformerLM  # lucidrains' package, from --peer_path

  torch.manual_seed(0)
  model = opt = batch = None

  def step() -> float:
    ids, positions, targets = batch
    x = model.token_emb(ids) + model.pos_emb(torch.arange(ids.shape[1]))
    x = model.linformer(x)
    x = torch.gather(x, 1, positions[:, :, None].expand(-1, -1, x.shape[-1]))
    loss = F.cross_entropy(model.to_logits(x).reshape(-1, VOCAB), targets.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())

  for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "build":
      n, b, m = cmd["n"], cmd["batch"], cmd["masked"]
      model = LinformerLM(VOCAB, HIDDEN, n, LAYERS, k=K, heads=HEADS, dropout=0.0)
      opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
      ids = torch.randint(5, VOCAB, (b, n))
      positions = torch.stack([torch.randperm(n)[:m].sort().values for _ in range(b)])
      targets = torch.gather(ids, 1, positions)
      batch = (ids, positions, targets)
      params = sum(p.numel() for p in model.parameters())
      answer = dict(params=params, threads=torch.get_num_threads(), torch=torch.__version__)
    elif cmd["op"] == "step":
      start = time.perf_counter()
      loss = step()
      answer = dict(seconds=time.perf_counter() - start, loss=loss)
    elif cmd["op"] == "profile":  # each operator's own time per step, from torch's profiler
      steps = cmd["steps"]
      start = time.perf_counter()
      with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
          step()
      seconds = (time.perf_counter() - start) / steps
      ops = {e.key: e.self_cpu_time_total / 1e6 / steps for e in prof.key_averages()}
      answer = dict(seconds=seconds, ops=ops)
    else:
      return
    print(json.dumps(answer), flush=True)


# torch's matmul kernels; every other operator's own time is the rest of the step.
TORCH_MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm")


def split_torch_ops(ops: dict[str, float]) -> tuple[float, dict[str, float]]:
  """(matmul seconds, {other operator: seconds}) of a torch profile's own times per operator."""
  matmul = sum(s for name, s in ops.items() if name in TORCH_MATMULS)
  return matmul, {name: s for name, s in ops.items() if name not in TORCH_MATMULS}


class Peer:
  """The peer's subprocess, one command at a time."""

  def __init__(self, peer_path: str):
    env = dict(os.environ, PYTHONPATH=peer_path)
    self.proc = subprocess.Popen(
      [sys.executable, str(Path(__file__).resolve()), "--worker"],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env=env,
      cwd=peer_path,
    )

  def ask(self, **cmd) -> dict:
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the peer's process ended (exit status {self.proc.wait()})")
    return json.loads(line)

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


def peer_missing(peer_path: str) -> str | None:
  if not (Path(peer_path) / "linformer" / "linformer.py").exists():
    return f"lucidrains' linformer is not in {peer_path}"
  try:
    import torch  # noqa: F401
  except ImportError:
    return "torch is not installed"
  return None


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    worker()
    return 0
  if reason := peer_missing(args.peer_path):
    print(f"peer_throughput.py: skipped: {reason}. Install the peer with `{INSTALL}` (and torch).")
    return 0

  import jax
  import train_throughput as tt

  from linformer.flops import matmul_rate
  from linformer.measure import write_report

  rate = matmul_rate(2048, 5)
  print(f"float32 matmul rate: {rate / 1e9:.1f} GFLOP/s", flush=True)
  rows = []
  for n in [int(v) for v in args.n.split(",")]:
    flags = PROJECT_FLAGS.split() + ["--tokens_per_step", str(args.tokens_per_step)]
    targs = tt.parse_args(flags + ["--warmup", "2"])
    print(f"n = {n}: building both steps ...", flush=True)
    project = tt.prepare("linformer", n, targs)
    if project["status"] != "ok":
      rows.append(dict(n=n, status=f"project: {project['status']}"))
      continue
    batch = project["batch"]
    peer = Peer(args.peer_path)
    try:
      info = peer.ask(op="build", n=n, batch=batch, masked=math.ceil(0.15 * n))
      for _ in range(2):
        peer.ask(op="step")
      ours, theirs, losses = [], [], []
      for _ in range(args.rounds):
        ours.append(project["call"]())
        answer = peer.ask(op="step")
        theirs.append(answer["seconds"])
        losses.append(answer["loss"])
    finally:
      peer.close()
    flops = sum(project["flops"].values())
    tokens = batch * n
    row = dict(
      n=n,
      batch=batch,
      status="ok",
      project_s=statistics.median(ours),
      peer_s=statistics.median(theirs),
      project_all=ours,
      peer_all=theirs,
      flops=flops,
      peer_info=info,
    )
    row["project_tps"] = tokens / row["project_s"]
    row["peer_tps"] = tokens / row["peer_s"]
    rows.append(row)
    print(
      f"  project {row['project_tps']:,.0f} tokens/s, peer {row['peer_tps']:,.0f} tokens/s "
      f"({row['project_tps'] / row['peer_tps']:.2f}x)",
      flush=True,
    )
  info = next((r["peer_info"] for r in rows if "peer_info" in r), {})
  lines = [
    f"Train step, the project against lucidrains' linformer 0.2.3 (torch {info.get('torch')}, "
    f"{info.get('threads')} threads) on {jax.devices()[0].platform}: {LAYERS} layers, hidden "
    f"{HIDDEN}, {HEADS} heads, MLP {MLP}, vocabulary {VOCAB}, k = {K} (E/F per layer, shared "
    f"by its heads), no dropout, float32, AdamW, MLM loss at the masked positions, "
    f"{args.tokens_per_step} tokens per step; medians of {args.rounds} interleaved steps; "
    f"matmul rate {rate / 1e9:.0f} GFLOP/s.",
    "",
    "| n | batch | project tokens/s | peer tokens/s | project / peer | project MFU | peer MFU |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    if r["status"] != "ok":
      lines.append(f"| {r['n']} | | {r['status']} | | | | |")
      continue
    lines.append(
      f"| {r['n']} | {r['batch']} | {r['project_tps']:,.0f} | {r['peer_tps']:,.0f} | "
      f"{r['project_tps'] / r['peer_tps']:.2f}x | {100 * r['flops'] / r['project_s'] / rate:.0f}% "
      f"| {100 * r['flops'] / r['peer_s'] / rate:.0f}% |"
    )
  text = "\n".join(lines) + "\n"
  platform = jax.devices()[0].platform
  write_report(
    text, args.out or Path(__file__).parent / "results" / f"peer_throughput_{platform}.md"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
