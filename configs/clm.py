r"""Causal-LM pretraining of a causal Linformer (or a full-attention decoder) on the same corpus.

  python train.py --config=configs/clm.py:size=tiny --workdir=runs/clm   # ~20-25 min, 2 CPU cores
  python eval.py --workdir=runs/clm --generate "The json module" --max_new_tokens=20
  python train.py --config=configs/clm.py:size=small,n=1024,k=256,c=128 --workdir=runs/clm_small

The packed blocks of configs/pretrain.py read unmasked, the next token predicted at every
position (`linformer/tasks/clm.py`). The Linformer is made causal segment-wise: each segment of
c tokens attends exactly, causally, to its own tokens and to r = k c / n compressed rows of every
earlier segment (`linformer/attention.py`); full attention takes a causal mask.

Config-string keys: those of configs/pretrain.py (size, n, k, sharing, projection, attention,
steps, batch) and c (config.model.segment_len: a divisor of n with k c / n a whole number >= 1;
default n/4, so each segment keeps r = k/4 rows; ignored by attention=full). Every field can be
overridden with --config.<field>=... ; the recipe is pretrain.py's (RoBERTa's AdamW and schedule).
"""

import ml_collections

from configs import pretrain

KNOWN_ARGS = ("size", "n", "k", "c", "sharing", "projection", "attention", "steps", "batch")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = pretrain.parse_arg(arg, KNOWN_ARGS, "configs/clm.py")
  c = args.pop("c", None)
  config = pretrain.get_config(",".join(f"{key}={value}" for key, value in args.items()))
  config.task = "clm"
  config.model.causal = True
  if c is not None or config.model.attention == "linformer":  # full attention needs none
    config.model.segment_len = int(c) if c is not None else config.model.max_len // 4
  return config
