r"""Uptraining: a pretrained BERT or RoBERTa continued as a Linformer with masked-LM training.

  python train.py --config=configs/uptrain.py:n=512,k=128 \
      --config.init_from=path/to/hf_bert_dir --workdir=runs/uptrain
  python train.py --config=configs/uptrain.py:n=2048,k=256,sharing=layerwise \
      --config.init_from=path/to/hf_bert_dir --workdir=runs/uptrain_long   # beyond 512 positions

`config.init_from` is a HuggingFace BERT / RoBERTa directory (config.json, model.safetensors or a
sharded index, tokenizer.json), a directory written by `python export.py`, or a
run's workdir. The checkpoint fixes the widths, layers, heads, vocabulary and token types; this
config chooses the attention (n, k, sharing, projection). What the checkpoint lacks starts fresh:
Linformer's E and F (as mean pooling with init=pool, the default, so the converted model starts
close to the original) and the MLM head of a BertModel-only checkpoint. Those train alone for
the first `freeze_pretrained_steps`, with the imported weights frozen; then everything trains.
An n beyond the checkpoint's positions extends the position table by copying it in blocks
(Longformer's recipe).

A checkpoint without an MLM head (all-MiniLM-L6-v2) gets one first, full attention, body frozen
for every step (freeze = steps), exported with it:

  python train.py --config=configs/uptrain.py:n=512,attention=full,steps=200,batch=4,freeze=200 \
      --config.init_from=$M --workdir=runs/head
  python export.py --workdir=runs/head --out=runs/head_hf   # init_from this

The teacher (linformer/tasks/distill.py) is the checkpoint itself with full attention, frozen:
`transfer=T` first trains E/F alone for T steps (on top of `steps`) to reproduce each layer's
attention output from the teacher's input to that layer (the per-layer error is logged);
`alpha` / `beta` add the KL from the teacher's MLM distribution (temperature `temperature`) and
the hidden-state error to the MLM loss of every later step.

Defaults: no transfer and no distillation. In the recovery table (REPRODUCING.md, "Uptraining")
neither beat E/F as mean pooling trained by the MLM loss alone at 300 MLM steps from a fitted
head (k = n/4: 184.0 pooling, 188.0 with 100 transfer steps, 254.3 with distillation too: that
teacher, a head on a frozen body, is worse than the student soon becomes). Distillation pays off
from a teacher that is better than the student: adapt with full attention first, export, and
convert that (134.1 with transfer and distillation against 142.2 with pooling alone, the same
steps from the same adapted checkpoint).

Config-string keys: n, k (default n/4), sharing, projection, attention (linformer | full: the
full-attention ceiling), init (normal | pool: how learned E/F start), steps (MLM steps), batch,
lr, freeze (steps of the freeze phase, within `steps`), transfer, alpha, beta, temperature, and
those of configs/pretrain.py. The defaults fit a few hundred steps on a CPU (see REPRODUCING.md);
on accelerators raise steps and batch.
"""

import ml_collections

from configs import pretrain

KNOWN_ARGS = (
  "n",
  "k",
  "sharing",
  "projection",
  "attention",
  "init",
  "steps",
  "batch",
  "lr",
  "freeze",
  "transfer",
  "alpha",
  "beta",
  "temperature",
  "sweep",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = pretrain.parse_arg(arg, KNOWN_ARGS, "configs/uptrain.py")
  n = int(args.get("n", 512))
  k = args.get("k", str(max(n // 4, 1)))
  steps = int(args.get("steps", 600))
  model_args = dict(
    n=n,
    k=k,
    steps=steps,
    batch=int(args.get("batch", 8)),
    size="tiny",
    **{key: args[key] for key in ("sharing", "projection", "attention") if key in args},
  )
  config = pretrain.get_config(",".join(f"{key}={v}" for key, v in model_args.items()))
  config.init_from = ""  # required: the pretrained checkpoint (see above)
  config.model.projection_init = args.get("init", "pool")
  config.freeze_pretrained_steps = int(args.get("freeze", max(steps // 10, 1)))
  config.freeze_lr = 1e-3
  # Attention transfer: E/F alone fitted to the teacher's attention outputs, layer by layer.
  config.transfer_steps = int(args.get("transfer", 0))  # before, and on top of, the steps
  config.num_train_steps = steps + config.transfer_steps
  config.transfer_lr = 1e-3
  config.distill.update(
    alpha=float(args.get("alpha", 0.0)),
    beta=float(args.get("beta", 0.0)),
    temperature=float(args.get("temperature", 1.0)),
  )
  # Continued pretraining: a small rate (Longformer used 3e-5 at batch 64; a CPU-sized batch of 8
  # and a few hundred steps want more); the warmup starts when the freeze ends. The new weights
  # (a fresh MLM head, E/F) train alone first at a larger constant rate.
  config.optimizer.update(
    lr=float(args.get("lr", 1e-4)), warmup_steps=max(steps // 10, 1), weight_decay=0.01
  )
  config.eval_at_start = True  # validation perplexity of the converted model, before training
  config.log_every_steps = 25
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 200
  return config


RECIPES = {  # the recovery table's three ways to adapt E/F (REPRODUCING.md, "Uptraining")
  "pool": {},  # (a) E/F start as mean pooling and learn from the MLM loss only
  "transfer": {"transfer": 100},  # (b) first fitted to the teacher's attention, layer by layer
  "distill": {"transfer": 100, "alpha": 1.0, "beta": 1.0},  # (c) then MLM + KL + hidden states
}


def sweep(add, arg=None):
  """sweep=recovery: the uptraining table of REPRODUCING.md at base length n (default 256),
  from a checkpoint with an MLM head (config.init_from; see the module docstring).

  The full-attention ceiling; Linformer k = n/8, n/4, n/2 with per-head E/F and k = n/4 with kv
  and with layerwise sharing, each in the three RECIPES; and n x 4 by position copying with
  attention transfer and k = n/4 of the base length, at a quarter of the batch (the same tokens
  per step). No freeze phase: the head comes with the checkpoint, and every row's `steps` are
  MLM steps (transfer steps come before them).
  """
  args = pretrain.parse_arg(arg)
  if args.get("sweep") != "recovery":
    raise ValueError(f"configs/uptrain.py: sweep={args.get('sweep')!r}; use sweep=recovery.")
  n, batch = int(args.get("n", 256)), int(args.get("batch", 8))
  add(n=n, attention="full", freeze=0)
  for k, sharing in ((n // 8, "none"), (n // 4, "none"), (n // 2, "none"), (n // 4, "kv")):
    for recipe in RECIPES.values():
      add(n=n, k=k, sharing=sharing, freeze=0, **recipe)
  for recipe in RECIPES.values():
    add(n=n, k=n // 4, sharing="layerwise", freeze=0, **recipe)
  add(n=4 * n, k=n // 4, batch=max(batch // 4, 1), freeze=0, **RECIPES["transfer"])
