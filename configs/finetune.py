r"""Fine-tuning on GLUE, IMDB or ListOps, RoBERTa's recipe, through the same loop as pretraining.

  python train.py --config=configs/finetune.py:dataset=sst2 \
      --config.init_from=runs/pretrain --workdir=runs/sst2
  python train.py --config=configs/finetune.py:dataset=imdb,n=1024,k=256,size=base \
      --config.init_from=runs/base_n1024 --workdir=runs/imdb
  python train.py --config=configs/finetune.py:dataset=listops,size=tiny,n=512,k=64 \
      --workdir=runs/listops          # from scratch, fully offline
  python train.py --config=configs/finetune.py:dataset=sst2 --config.init_from=runs/pretrain \
      --config.data.files.train=SST-2/train.tsv --config.data.files.validation=SST-2/dev.tsv \
      --workdir=runs/sst2_files       # GLUE's own TSVs instead of TFDS

Config-string keys: dataset (sst2 | qnli | qqp | imdb | cola | mrpc | stsb | mnli | rte | wnli |
listops | files: your own, from config.data.files; `task=` is its deprecated spelling), and the
model keys of configs/pretrain.py (size, n, k, sharing, projection, attention), which must match
the pretraining run given in init_from.
Also lr, batch, epochs.
`sweep(add, arg)` (sweep.py) lists, by the config string's sweep= key: `glue` (the default) the
RoBERTa fine-tuning grid, lr in {1e-5, 2e-5, 3e-5} x batch in {16, 32}; `attention` the same run
with each attention kind (linformer, full, lsh), e.g. ListOps from scratch as LRA compares them:

  python sweep.py --config=configs/finetune.py:dataset=listops,n=512,sweep=attention \
      --workdir=runs/listops_attention
"""

import ml_collections
from absl import logging

from configs import pretrain
from linformer.config import ATTENTION_KINDS
from linformer.data import datasets

KNOWN_ARGS = (
  "dataset",
  "size",
  "n",
  "k",
  "sharing",
  "projection",
  "attention",
  "lr",
  "batch",
  "epochs",
  "listops",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = pretrain.parse_arg(arg, KNOWN_ARGS + ("task",), "configs/finetune.py")
  if "task" in args:
    if "dataset" in args:
      raise ValueError("configs/finetune.py: give dataset= only (task= is its old spelling).")
    logging.warning(
      "configs/finetune.py: the config-string key task= is deprecated: use dataset=%s instead.",
      args["task"],
    )
    args["dataset"] = args.pop("task")
  dataset = args.get("dataset", "sst2")
  datasets.check_dataset_name(dataset)  # unknown names fail here, listing the known ones
  model_args = ",".join(f"{k}={args[k]}" for k in pretrain.KNOWN_ARGS if k in args)
  base = pretrain.get_config(model_args)

  config = ml_collections.ConfigDict()
  config.task = "finetune"
  config.seed = 0
  config.init_from = ""  # a pretraining workdir; empty: train from scratch
  config.model = base.model
  # Fine-tuning regularises with BERT's dropout, also after a recipe pretrained without it (mini).
  config.model.dropout_rate = config.model.attention_dropout_rate = 0.1
  config.data = datasets.default_config()
  config.data.dataset = dataset
  config.data.tokenizer = ""  # tokenizer.json for from-scratch runs (ListOps has its own)
  if dataset == "listops":
    config.data.listops_config = args.get("listops", "default")

  config.batch_size = int(args.get("batch", 32))
  config.grad_accum_steps = 1
  config.freeze_pretrained_steps = 0  # steps training only what init_from did not provide
  config.freeze_lr = ml_collections.config_dict.placeholder(float)  # the new weights; None: lr
  config.num_epochs = float(args.get("epochs", 10))
  config.num_train_steps = -1  # -1: num_epochs over the train split
  # fmt: off
  config.optimizer = ml_collections.ConfigDict(dict(
    lr=float(args.get("lr", 2e-5)), end_lr=0.0, schedule="linear", warmup_steps=0,
    warmup_fraction=0.06, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, grad_clip_norm=1.0,
  ))
  # fmt: on
  if dataset == "listops":  # from scratch: a larger rate, as in LRA
    config.optimizer.lr = float(args.get("lr", 1e-3))
  config.mesh = base.mesh  # (data, fsdp, tensor) and the sharding rules

  config.log_every_steps = 50
  config.eval_every_steps = 1000
  config.num_eval_steps = -1
  config.checkpoint_every_steps = 1000
  config.max_checkpoints_to_keep = 2
  config.async_checkpointing = True
  # Per-device peak FLOP/s for the logged MFU; None: the datasheet peak of a known GPU/TPU at
  # config.model.dtype, or a matmul rate measured at start (CPU).
  config.peak_flops = ml_collections.config_dict.placeholder(float)
  return config


def sweep(add, arg=None):
  """sweep=glue (the default): RoBERTa's GLUE grid (Liu et al. 2019, appendix), learning rate x
  batch size; sweep=attention: each attention kind."""
  name = pretrain.parse_arg(arg).get("sweep", "glue")
  if name == "attention":
    for kind in ATTENTION_KINDS:
      add(attention=kind)
  elif name == "glue":
    for lr in (1e-5, 2e-5, 3e-5):
      for batch in (16, 32):
        add(**{"optimizer.lr": lr, "batch_size": batch})
  else:
    raise ValueError(f"configs/finetune.py: sweep={name!r}; use glue or attention.")
