"""A finished or running run's checkpoint, read back: for eval.py, export and the analyses.

`checkpoint_step` chooses the checkpoint (the latest, a given step, or the best by the task's
main metric) with the errors a user sees; `restore_run` rebuilds the trainer and restores the
whole state onto this machine's devices; `run_params` reads the parameters alone, as arrays.
"""

from __future__ import annotations

import os

import jax

from linformer.config import ConfigError, ModelConfig
from linformer.convert import names
from linformer.convert.export import source_hf_config
from linformer.convert.hf_config import config_for_checkpoint
from linformer.convert.hf_import import target_shapes
from linformer.data.tokenizer import Tokenizer
from linformer.tasks import get_task
from linformer.training import checkpointing, partitioning, warm_start
from linformer.training.trainer import make_trainer


def checkpoint_step(workdir: str, step: int | None = None, best: bool = False):
  """(read-only checkpoint manager, step) of a run: the newest checkpoint unless `step`; with
  `best`, of the checkpoints kept by the task's main metric."""
  kind = checkpointing.BEST if best else checkpointing.LATEST
  steps, manager = [], None
  if os.path.isdir(os.path.join(os.path.abspath(workdir), kind)):
    manager = checkpointing.make_manager(workdir, None, kind, create=False)  # reads, deletes none
    steps = manager.all_steps()
  if not steps and best:
    raise ConfigError(
      f"--best: {workdir} has no best checkpoint (fine-tuning runs keep one, by their main "
      "metric). Fix: leave out --best to use the latest checkpoint."
    )
  if not steps:
    raise ConfigError(f"{workdir} has no checkpoint yet. Fix: train it first (train.py).")
  step = max(steps) if step is None else step
  if step not in steps:
    raise ConfigError(
      f"--step={step}: {workdir} has no {'best ' if best else ''}checkpoint at step {step}; it "
      f"has {sorted(steps)}."
    )
  return manager, step


def restore_run(workdir: str, step: int | None = None, config=None, best: bool = False, mesh=None):
  """(config, trainer, state) of a run's checkpoint (the latest unless `step`, or the best by
  the task's main metric), for evaluation and prediction. `config` defaults to the run's own.

  The state is restored onto `mesh` ({data, fsdp, tensor} sizes) if given, else the run's mesh
  if this machine has its devices, else every device that divides the batch on the data axis:
  a checkpoint written on 8 devices evaluates on 1 (orbax restores onto any sharding).
  """
  config = checkpointing.load_config(workdir) if config is None else config
  manager, step = checkpoint_step(workdir, step, best)
  if mesh is None:
    mesh = partitioning.fitting_mesh(config.mesh, config.batch_size)
  else:
    try:
      mesh = partitioning.make_mesh(mesh)
    except ConfigError as e:
      raise ConfigError(f"--mesh: {str(e).replace('config.mesh=', 'the mesh ')}") from None
    if config.batch_size % partitioning.data_parallel_size(mesh):
      raise ConfigError(
        f"--mesh: data x fsdp = {partitioning.data_parallel_size(mesh)} devices do not divide "
        f"the run's config.batch_size={config.batch_size}. Fix: use a divisor of it."
      )
  task = get_task(config)
  task.setup(workdir, per_host_batch_size=max(config.batch_size // jax.process_count(), 1))
  # The schedule's length changes no shape; -1 (epochs) would need the dataset's size.
  # The optimizer state's layout follows the groups of a freeze phase: the imported names.
  imported = warm_start.read_imported(workdir) if config.get("freeze_pretrained_steps") else None
  trainer = make_trainer(config, task, mesh, max(config.num_train_steps, 10**9), imported=imported)
  state = checkpointing.restore(manager, step, trainer.abstract_state())
  return config, trainer, state


def run_params(workdir: str, step: int | None = None):
  """(run config, ModelConfig, {path: array} of params and fixed variables, step) of a run's
  checkpoint (the latest unless `step`). A run warm-started from a HF checkpoint has that
  checkpoint's widths (`config_for_checkpoint`), as in the loop."""
  config = checkpointing.load_config(workdir)
  manager, step = checkpoint_step(workdir, step)
  raw = checkpointing.restore_raw(manager, step)
  params = {**names.flatten(raw["params"]), **names.flatten(raw.get("rest") or {})}
  params = names.unstack_layers(params)  # a scanned run's layers, one by one
  if names.WORDS not in params:
    raise ValueError(f"{workdir}: the checkpoint has no encoder (no {names.WORDS}).")
  vocab = config.model.get("vocab_size")  # else the run's tokenizer decided it, as in the task
  if not vocab:
    vocab = Tokenizer.load(os.path.join(workdir, "tokenizer")).vocab_size
  cfg = ModelConfig.from_dict({**config.model.to_dict(), "vocab_size": vocab})
  hf = source_hf_config(config)
  if hf is not None:
    cfg = config_for_checkpoint(cfg, hf)
  shapes = target_shapes(cfg)
  wrong = [
    f"{'.'.join(map(str, p))} {params[p].shape} (config: {shapes[p]})"
    for p in params
    if p in shapes and tuple(params[p].shape) != shapes[p]
  ]
  if wrong:
    raise ValueError(
      f"{workdir}: the run's config.model does not describe its checkpoint: "
      + "; ".join(wrong[:10])
    )
  return config, cfg, params, step
