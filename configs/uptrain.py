r"""Uptraining: a pretrained BERT or RoBERTa continued as a Linformer with masked-LM training.

  python train.py --config=configs/uptrain.py:n=512,k=128 \
      --config.init_from=path/to/hf_bert_dir --workdir=runs/uptrain
  python train.py --config=configs/uptrain.py:n=2048,k=256,sharing=layerwise \
      --config.init_from=path/to/hf_bert_dir --workdir=runs/uptrain_long   # beyond 512 positions

`config.init_from` is a HuggingFace BERT / RoBERTa directory (config.json, model.safetensors or a
sharded index, tokenizer.json), a directory written by `python -m linformer.convert.export`, or a
run's workdir. The checkpoint fixes the widths, layers, heads, vocabulary and token types; this
config chooses the attention (n, k, sharing, projection). What the checkpoint lacks starts fresh:
Linformer's E and F (as mean pooling with init=pool, the default, so the converted model starts
close to the original) and the MLM head of a BertModel-only checkpoint. Those train alone for
the first `freeze_pretrained_steps`, with the imported weights frozen; then everything trains.
An n beyond the checkpoint's positions extends the position table by copying it in blocks
(Longformer's recipe).

Config-string keys: n, k (default n/4), sharing, projection, attention (linformer | full: the
full-attention ceiling), init (normal | pool: how learned E/F start), steps, batch, lr, freeze
(steps of the freeze phase), and those of configs/pretrain.py. The defaults fit a few hundred
steps on a CPU (see REPRODUCING.md); on accelerators raise steps and batch.
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


def sweep(add, arg=None):
  """sweep=recovery: the uptraining table of REPRODUCING.md at base length n (default 256).

  The full-attention ceiling; Linformer k = n/8, n/4, n/2 (sharing none, E/F from mean pooling);
  k = n/4 with layerwise sharing; k = n/4 with E/F from N(0, 1/n) (the initialisation question);
  and n x 4 by position copying with the same k as the k = n/4 run, at a quarter of the batch
  (the same tokens per step).
  """
  args = pretrain.parse_arg(arg)
  if args.get("sweep") != "recovery":
    raise ValueError(f"configs/uptrain.py: sweep={args.get('sweep')!r}; use sweep=recovery.")
  n, batch = int(args.get("n", 256)), int(args.get("batch", 8))
  add(n=n, attention="full")
  for k in (n // 8, n // 4, n // 2):
    add(n=n, k=k)
  add(n=n, k=n // 4, sharing="layerwise")
  add(n=n, k=n // 4, init="normal")
  add(n=4 * n, k=n // 4, batch=max(batch // 4, 1))  # the same tokens per step
