r"""Trains a task from a config: masked- or causal-LM pretraining, or fine-tuning.

  python train.py --config=configs/pretrain.py:size=tiny --workdir=runs/tiny
  python train.py --config=configs/clm.py:size=tiny --workdir=runs/clm

A workdir that already holds a checkpoint is resumed. On several hosts, start the same command
on each; `jax.distributed` is initialised automatically on SLURM and Cloud TPU, or from
--coordinator_address/--num_processes/--process_id.

A bad flag or config value, a missing file or a dataset that is not prepared prints one line
naming it and the fix, writes nothing and exits with status 2 (--traceback: the full trace).
"""

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from linformer import cli


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, e.g. configs/pretrain.py:size=tiny.",
    flag_values=fv,
    lock_config=True,
    sys_argv=argv,
  )
  flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, metrics, tokenizer.", flag_values=fv
  )
  flags.DEFINE_integer(
    "until_step",
    None,
    "Stop with a checkpoint after this step (the schedule still runs to "
    "config.num_train_steps); the next start resumes.",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-host runs.", flag_values=fv
  )
  flags.DEFINE_integer(
    "num_processes", None, "Number of processes (hosts) in a multi-host run.", flag_values=fv
  )
  flags.DEFINE_integer(
    "process_id", None, "This process's index in a multi-host run.", flag_values=fv
  )
  flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)


def initialize_distributed(fv: flags.FlagValues) -> None:
  """Multi-host setup: explicit flags, else auto-detection on SLURM and Cloud TPU pods."""
  import jax

  if fv.coordinator_address:
    jax.distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
    jax.distributed.initialize()


def main(fv: flags.FlagValues) -> int:
  if fv.until_step is not None and fv.until_step < 1:
    raise cli.UsageError(
      f"--until_step={fv.until_step}: must be a step >= 1 (a checkpoint is written there)."
    )
  initialize_distributed(fv)
  from linformer.training.loop import train_and_evaluate

  logging.set_verbosity(logging.WARNING)  # keep the terminal to the progress bar and results
  result = train_and_evaluate(fv.config, fv.workdir, until_step=fv.until_step)
  ev = result.get("eval")
  if ev:
    print("final eval: " + ", ".join(f"{k} {v:.4g}" for k, v in ev.items()))
  if ev and "unigram_perplexity" in ev:
    print(
      f"validation perplexity {ev['perplexity']:.1f} vs {ev['unigram_perplexity']:.1f} for "
      "a unigram model of the same tokens"
    )
  return 0


def run(argv: list[str] | None = None) -> int:
  """train.py with `argv` (default sys.argv); returns the exit status (2: a bad input)."""
  return cli.run("train.py", define_flags, main, argv, doc=__doc__)


if __name__ == "__main__":
  sys.exit(run())
