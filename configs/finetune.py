r"""Fine-tuning on GLUE, IMDB or ListOps, RoBERTa's recipe, through the same loop as pretraining.

  python train.py --config=configs/finetune.py:task=sst2 \
      --config.init_from=runs/pretrain --workdir=runs/sst2
  python train.py --config=configs/finetune.py:task=imdb,n=1024,k=256,size=base \
      --config.init_from=runs/base_n1024 --workdir=runs/imdb
  python train.py --config=configs/finetune.py:task=listops,size=tiny,n=512,k=64 \
      --workdir=runs/listops          # from scratch, fully offline

Config-string keys: task (sst2 | qnli | qqp | imdb | cola | mrpc | stsb | mnli | rte | wnli |
listops), and the model keys of configs/pretrain.py (size, n, k, sharing, projection,
attention), which must match the pretraining run given in init_from. Also lr, batch, epochs.
`sweep(add, arg)` lists the RoBERTa fine-tuning grid: lr in {1e-5, 2e-5, 3e-5} x batch in
{16, 32}.
"""

import ml_collections

from configs import pretrain
from linformer.data import classification

KNOWN_ARGS = ("task", "size", "n", "k", "sharing", "projection", "attention", "lr", "batch",
              "epochs", "listops")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = pretrain.parse_arg(arg)
  unknown = sorted(set(args) - set(KNOWN_ARGS))
  if unknown:
    raise ValueError(f"configs/finetune.py: unknown config-string key(s) {unknown}; known: "
                     f"{KNOWN_ARGS}.")
  task = args.get("task", "sst2")
  classification.get_task_spec(task)  # unknown task names fail here, listing the known ones
  model_args = ",".join(f"{k}={args[k]}" for k in pretrain.KNOWN_ARGS if k in args)
  base = pretrain.get_config(model_args)

  config = ml_collections.ConfigDict()
  config.task = "finetune"
  config.seed = 0
  config.init_from = ""  # a pretraining workdir; empty: train from scratch
  config.model = base.model
  config.data = classification.default_config()
  config.data.task = task
  config.data.tokenizer = ""  # tokenizer.json for from-scratch runs (ListOps has its own)
  if task == "listops":
    config.data.listops_config = args.get("listops", "default")

  config.batch_size = int(args.get("batch", 32))
  config.grad_accum_steps = 1
  config.num_epochs = float(args.get("epochs", 10))
  config.num_train_steps = -1  # -1: num_epochs over the train split
  config.optimizer = ml_collections.ConfigDict(dict(
      lr=float(args.get("lr", 2e-5)), end_lr=0.0, schedule="linear", warmup_steps=0,
      warmup_fraction=0.06, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, grad_clip_norm=1.0,
  ))
  if task == "listops":  # from scratch: a larger rate, as in LRA
    config.optimizer.lr = float(args.get("lr", 1e-3))
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  config.log_every_steps = 50
  config.eval_every_steps = 1000
  config.num_eval_steps = -1
  config.checkpoint_every_steps = 1000
  config.max_checkpoints_to_keep = 2
  config.async_checkpointing = True
  return config


def sweep(add, arg=None):
  """RoBERTa's GLUE grid (Liu et al. 2019, appendix): learning rate x batch size."""
  for lr in (1e-5, 2e-5, 3e-5):
    for batch in (16, 32):
      add(**{"optimizer.lr": lr, "batch_size": batch})
