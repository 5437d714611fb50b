r"""Masked-LM pretraining of a Linformer (or the full-attention baseline), RoBERTa's recipe.

  python train.py --config=configs/pretrain.py:size=tiny --workdir=runs/tiny
  python train.py --config=configs/pretrain.py:size=base,n=1024,k=256,sharing=layerwise \
      --workdir=runs/base --config.optimizer.lr=3e-4

Config-string keys: size (tiny | small | base | large), n (sequence length = model max_len),
k (an int, or per-layer values joined by '/': k=128/128/64/64), sharing (none | headwise | kv |
layerwise), projection (learned | random | mean_pool | max_pool | conv), attention
(linformer | full), steps (num_train_steps), batch (batch_size), and sweep (used by sweep.py).
Every field below can also be overridden with --config.<field>=... .

Sweeps of the paper's Figure 3 (`python sweep.py --config=configs/pretrain.py:sweep=fig3a,...`):
fig3a (n=512: k in 64, 128, 256 and the Transformer), fig3b (n=1024: k in 128, 256, 512 and the
Transformer), fig3c (n=512, k=128: the four sharing modes), fig3d (k=256: n in 512..4096).
"""

import ml_collections

from linformer.data.pretrain import default_config as data_config

# name: (layers, hidden, heads, mlp, n, k, batch, steps, lr, warmup)
SIZES = {
    "tiny": (4, 128, 4, 512, 128, 32, 32, 800, 1e-3, 60),  # ~6 minutes on 2 CPU cores
    "small": (6, 512, 8, 2048, 512, 128, 256, 100_000, 6e-4, 6_000),
    "base": (12, 768, 12, 3072, 512, 128, 2048, 250_000, 5e-4, 10_000),  # the paper's runs
    "large": (24, 1024, 16, 4096, 512, 128, 2048, 250_000, 3e-4, 10_000),
}


def parse_arg(arg: str | None) -> dict[str, str]:
  if not arg:
    return {}
  pairs = [kv.split("=", 1) for kv in arg.split(",") if kv]
  bad = [kv for kv in pairs if len(kv) != 2]
  if bad:
    raise ValueError(f"Config string {arg!r}: expected key=value pairs separated by commas.")
  return dict(pairs)


KNOWN_ARGS = ("size", "n", "k", "sharing", "projection", "attention", "steps", "batch", "sweep")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg)
  unknown = sorted(set(args) - set(KNOWN_ARGS))
  if unknown:
    raise ValueError(f"configs/pretrain.py: unknown config-string key(s) {unknown}; "
                     f"known: {KNOWN_ARGS}.")
  size = args.get("size", "tiny")
  if size not in SIZES:
    raise ValueError(f"configs/pretrain.py: size={size!r} unknown; use one of {list(SIZES)}.")
  layers, hidden, heads, mlp, n, k, batch, steps, lr, warmup = SIZES[size]
  n = int(args.get("n", n))
  k = args.get("k", k)
  k = [int(v) for v in k.split("/")] if isinstance(k, str) and "/" in k else int(k)

  config = ml_collections.ConfigDict()
  config.task = "mlm"
  config.seed = 0
  config.model = ml_collections.ConfigDict(dict(
      max_len=n, num_layers=layers, hidden_size=hidden, num_heads=heads, mlp_dim=mlp,
      attention=args.get("attention", "linformer"), k=k,
      sharing=args.get("sharing", "none"), projection=args.get("projection", "learned"),
      dropout_rate=0.1, attention_dropout_rate=0.1, pre_ln=False, layer_norm_eps=1e-5,
      type_vocab_size=0, gelu_approximate=False,
      dtype="float32", remat=False,
      attention_impl=ml_collections.config_dict.placeholder(str),  # None | xla | cudnn
  ))
  config.data = data_config()

  config.batch_size = int(args.get("batch", batch))  # sequences per step, all hosts together
  config.grad_accum_steps = 1
  config.num_train_steps = int(args.get("steps", steps))
  config.optimizer = ml_collections.ConfigDict(dict(
      lr=lr, end_lr=0.0, schedule="linear", warmup_steps=min(warmup, config.num_train_steps),
      b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, grad_clip_norm=1.0,
  ))
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  config.log_every_steps = 25 if size == "tiny" else 100
  config.eval_every_steps = 200 if size == "tiny" else 5_000
  config.num_eval_steps = -1  # -1: the whole validation split
  config.checkpoint_every_steps = 200 if size == "tiny" else 5_000
  config.max_checkpoints_to_keep = 3
  config.async_checkpointing = True
  return config


SWEEPS = {
    "fig3a": [dict(n=512, attention="full")] + [dict(n=512, k=k) for k in (64, 128, 256)],
    "fig3b": [dict(n=1024, attention="full")] + [dict(n=1024, k=k) for k in (128, 256, 512)],
    "fig3c": [dict(n=512, k=128, sharing=s) for s in ("none", "headwise", "kv", "layerwise")],
    "fig3d": [dict(n=n, k=256) for n in (512, 1024, 2048, 4096)],
}


def sweep(add, arg=None):
  """The variants of the Figure 3 panel named by the config string's sweep= key."""
  name = parse_arg(arg).get("sweep")
  if name not in SWEEPS:
    raise ValueError(f"configs/pretrain.py: sweep={name!r}; use one of {list(SWEEPS)}.")
  for overrides in SWEEPS[name]:
    add(**overrides)
