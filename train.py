r"""Trains a task from a config: masked-LM pretraining or fine-tuning.

  python train.py --config=configs/pretrain.py:size=tiny --workdir=runs/tiny

A workdir that already holds a checkpoint is resumed. On several hosts, start the same command
on each; `jax.distributed` is initialised automatically on SLURM and Cloud TPU, or from
--coordinator_address/--num_processes/--process_id.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/pretrain.py:size=tiny.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, tokenizer.")
flags.DEFINE_integer(
  "until_step",
  None,
  "Stop with a checkpoint after this step (the schedule still runs to "
  "config.num_train_steps); the next start resumes.",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) in a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def initialize_distributed() -> None:
  """Multi-host setup: explicit flags, else auto-detection on SLURM and Cloud TPU pods."""
  import jax

  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
    jax.distributed.initialize()


def main(argv):
  del argv
  initialize_distributed()
  from linformer.training.loop import train_and_evaluate

  logging.set_verbosity(logging.WARNING)  # keep the terminal to the progress bar and results
  result = train_and_evaluate(FLAGS.config, FLAGS.workdir, until_step=FLAGS.until_step)
  ev = result.get("eval")
  if ev:
    print("final eval: " + ", ".join(f"{k} {v:.4g}" for k, v in ev.items()))
  if ev and "unigram_perplexity" in ev:
    print(
      f"validation perplexity {ev['perplexity']:.1f} vs {ev['unigram_perplexity']:.1f} for "
      "a unigram model of the same tokens"
    )


if __name__ == "__main__":
  app.run(main)
