r"""Masked-LM pretraining of a Linformer (or the full-attention baseline), RoBERTa's recipe.

  python train.py --config=configs/pretrain.py:size=tiny --workdir=runs/tiny
  python train.py --config=configs/pretrain.py:size=base,n=1024,k=256,sharing=layerwise \
      --workdir=runs/base --config.optimizer.lr=3e-4

Config-string keys: size (tiny | mini | small | base | large), n (sequence length = model max_len),
k (an int, or per-layer values joined by '/': k=128/128/64/64), sharing (none | headwise | kv |
layerwise), projection (learned | random | mean_pool | max_pool | conv), attention
(linformer | full | lsh), steps (num_train_steps), batch (batch_size), and sweep (used by
sweep.py). Every field below can also be overridden with --config.<field>=... ; LSH attention's
with --config.model.lsh_{buckets,rounds,chunk_len,seed}=... (chunks of 64 by default: n must be a
multiple of lsh_chunk_len).

Sweeps of the paper's Figure 3 (`python sweep.py --config=configs/pretrain.py:sweep=fig3a,...`):
fig3a (n=512: k in 64, 128, 256 and the Transformer), fig3b (n=1024: k in 128, 256, 512 and the
Transformer), fig3c (n=512, k=128: the four sharing modes), fig3d (k=256: n in 512..4096), fig3
(3a and 3c, their shared row once, Table 2's rows first); and attention (the same model with each
attention kind: linformer, full, lsh).
"""

from typing import NamedTuple

import ml_collections

from linformer.config import ATTENTION_KINDS
from linformer.data.pretrain import default_config as data_config
from linformer.training import partitioning


class Size(NamedTuple):
  layers: int
  hidden: int
  heads: int
  mlp: int
  n: int
  k: int
  batch: int
  steps: int
  lr: float
  warmup: int
  pre_ln: bool = False  # LayerNorm before each sublayer (True) or after (RoBERTa)
  dropout: float = 0.1  # hidden and attention dropout


# fmt: off
SIZES = {
  "tiny": Size(layers=4, hidden=128, heads=4, mlp=512, n=128, k=32, batch=32, steps=800,
               lr=1e-3, warmup=60),  # ~6 minutes on 2 CPU cores
  # BERT-Mini's shape; the recipe tuned on the Transformer for the fastest fall of validation
  # perplexity on the IMDB reviews in ~80 minutes on 2 CPU cores (REPRODUCING.md, "From scratch
  # on movie reviews"): pre-LN, no dropout, a high peak rate, small batches (6.6M tokens).
  "mini": Size(layers=4, hidden=256, heads=4, mlp=1024, n=512, k=128, batch=8, steps=1600,
               lr=2e-3, warmup=160, pre_ln=True, dropout=0.0),
  "small": Size(layers=6, hidden=512, heads=8, mlp=2048, n=512, k=128, batch=256,
                steps=100_000, lr=6e-4, warmup=6_000),
  "base": Size(layers=12, hidden=768, heads=12, mlp=3072, n=512, k=128, batch=2048,
               steps=250_000, lr=5e-4, warmup=10_000),  # the paper's runs
  "large": Size(layers=24, hidden=1024, heads=16, mlp=4096, n=512, k=128, batch=2048,
                steps=250_000, lr=3e-4, warmup=10_000),
}
# fmt: on


def parse_arg(arg: str | None, known: tuple[str, ...] | None = None, source: str = "") -> dict:
  """'k1=v1,k2=v2' as a dict; with `known`, any other key is an error naming `source`."""
  if not arg:
    return {}
  pairs = [kv.split("=", 1) for kv in arg.split(",") if kv]
  bad = [kv for kv in pairs if len(kv) != 2]
  if bad:
    raise ValueError(f"Config string {arg!r}: expected key=value pairs separated by commas.")
  unknown = sorted(set(dict(pairs)) - set(known or dict(pairs)))
  if unknown:
    raise ValueError(f"{source}: unknown config-string key(s) {unknown}; known: {known}.")
  return dict(pairs)


def mesh_rules() -> ml_collections.ConfigDict:
  """`config.mesh.rules`, every logical axis listed so any can be set from the command line."""
  rules = partitioning.default_rules().items()
  return ml_collections.ConfigDict(
    {name: axis or ml_collections.config_dict.placeholder(str) for name, axis in rules}
  )


KNOWN_ARGS = ("size", "n", "k", "sharing", "projection", "attention", "steps", "batch", "sweep")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, KNOWN_ARGS, "configs/pretrain.py")
  size = args.get("size", "tiny")
  if size not in SIZES:
    raise ValueError(f"configs/pretrain.py: size={size!r} unknown; use one of {list(SIZES)}.")
  s = SIZES[size]
  n = int(args.get("n", s.n))
  k = args.get("k", s.k)
  k = [int(v) for v in k.split("/")] if isinstance(k, str) and "/" in k else int(k)

  config = ml_collections.ConfigDict()
  config.task = "mlm"
  config.seed = 0
  config.init_from = ""  # a run's workdir to continue from (all its weights); empty: scratch
  # fmt: off
  config.model = ml_collections.ConfigDict(dict(
    vocab_multiple=128,  # embedding rows padded to a multiple of this, to shard (vocab: data's)
    max_len=n, num_layers=s.layers, hidden_size=s.hidden, num_heads=s.heads, mlp_dim=s.mlp,
    attention=args.get("attention", "linformer"), k=k, sharing=args.get("sharing", "none"),
    projection=args.get("projection", "learned"),
    # How learned E/F start: normal N(0, 1/n) | pool (mean pooling over n/k windows) | auto
    # (pool when they are new over attention imported from a HF checkpoint, else normal).
    projection_init="auto",
    causal=False, segment_len=0,  # decoders: configs/clm.py
    dropout_rate=s.dropout, attention_dropout_rate=s.dropout, activation_dropout_rate=0.0,
    pre_ln=s.pre_ln, layer_norm_eps=1e-5,
    type_vocab_size=0, gelu_approximate=False,
    remat=False, remat_policy="full",  # full | save_dots | save_dots_no_batch | save_qkv_proj
    # Layers stacked and run as one scan (compile time flat in depth); None: above 4 layers.
    scan_layers=ml_collections.config_dict.placeholder(bool),
    dtype="auto",  # compute: bfloat16 on GPU/TPU, float32 on CPU; parameters stay float32
    attention_impl=ml_collections.config_dict.placeholder(str),  # None | xla | cudnn
    # attention=lsh (Reformer): buckets (None: 2 n / lsh_chunk_len), hash rounds, the sorted
    # chunks' length, and the seed of evaluation's rotations (training draws new ones per step).
    lsh_buckets=ml_collections.config_dict.placeholder(int), lsh_rounds=4, lsh_chunk_len=64,
    lsh_seed=0,
  ))
  # fmt: on
  config.data = data_config()

  config.batch_size = int(args.get("batch", s.batch))  # sequences per step, all hosts together
  config.grad_accum_steps = 1
  config.num_train_steps = int(args.get("steps", s.steps))
  config.freeze_pretrained_steps = 0  # steps training only what init_from did not provide
  config.freeze_lr = ml_collections.config_dict.placeholder(float)  # the new weights; None: lr
  # A frozen full-attention teacher from init_from (configs/uptrain.py; linformer/tasks/distill.py):
  config.transfer_steps = 0  # steps fitting only E/F to the teacher's attention, before the rest
  config.transfer_lr = ml_collections.config_dict.placeholder(float)  # None: optimizer.lr
  config.distill = ml_collections.ConfigDict(dict(alpha=0.0, beta=0.0, temperature=1.0))

  # Warmup follows the run's length unless set: the size's warmup, at most 10% of
  # num_train_steps, also when --config.num_train_steps changes it (a lazy reference:
  # min(a, b) = (a + b - |a - b|) / 2, as references have no min).
  tenth = config.get_ref("num_train_steps") // 10
  warmup = (tenth + s.warmup - abs(tenth - s.warmup)) // 2
  # fmt: off
  config.optimizer = ml_collections.ConfigDict(dict(
    lr=s.lr, end_lr=0.0, schedule="linear", warmup_steps=warmup,
    b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01, grad_clip_norm=1.0,
  ))
  # fmt: on
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical parameter axis -> mesh axis (None: replicated); see linformer/axes.py.
  config.mesh.rules = mesh_rules()

  config.log_every_steps = {"tiny": 25, "mini": 25}.get(size, 100)
  config.eval_every_steps = {"tiny": 200, "mini": 200}.get(size, 5_000)
  # -1: the whole validation split; mini's periodic evaluations read its first 256 sequences
  # (eval.py --workdir=W reads it all).
  config.num_eval_steps = {"mini": 32}.get(size, -1)
  config.checkpoint_every_steps = {"tiny": 200, "mini": 100}.get(size, 5_000)
  config.max_checkpoints_to_keep = 3
  config.async_checkpointing = True
  # Per-device peak FLOP/s for the logged MFU; None: the datasheet peak of a known GPU/TPU at
  # config.model.dtype, or a matmul rate measured at start (CPU).
  config.peak_flops = ml_collections.config_dict.placeholder(float)
  return config


# (k, sharing) of fig3's Linformer rows, Table 2's first.
FIG3_ORDER = [(128, "none"), (128, "layerwise"), (256, "none"), (64, "none"), (128, "kv"),
              (128, "headwise")]  # fmt: skip
SWEEPS = {
  "fig3a": [dict(n=512, attention="full")] + [dict(n=512, k=k) for k in (64, 128, 256)],
  "fig3b": [dict(n=1024, attention="full")] + [dict(n=1024, k=k) for k in (128, 256, 512)],
  "fig3c": [dict(n=512, k=128, sharing=s) for s in ("none", "headwise", "kv", "layerwise")],
  "fig3d": [dict(n=n, k=256) for n in (512, 1024, 2048, 4096)],
  # 3a and 3c at n=512 with their shared row once, in the order Table 2 needs them.
  "fig3": [dict(n=512, attention="full")] + [dict(n=512, k=k, sharing=s) for k, s in FIG3_ORDER],
  "attention": [dict(attention=kind) for kind in ATTENTION_KINDS],
}


def sweep(add, arg=None):
  """The variants of the Figure 3 panel (or `attention`) named by the config string's sweep=."""
  name = parse_arg(arg).get("sweep")
  if name not in SWEEPS:
    raise ValueError(f"configs/pretrain.py: sweep={name!r}; use one of {list(SWEEPS)}.")
  for overrides in SWEEPS[name]:
    add(**overrides)
