"""The one training loop: pretraining and fine-tuning differ only in their `Task`.

`train_and_evaluate` checks the config and workdir (`validation`), opens a warm start, builds the
trainer (`trainer.make_trainer`), resumes from the latest checkpoint if there is one, and runs
the steps with logging, evaluation and checkpoints. Data order comes from the Grain iterator,
whose state is checkpointed with the model, so a resumed run continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from linformer.config import ConfigError, resolve_dtype
from linformer.tasks import get_task
from linformer.training import checkpointing, partitioning, run_logs, validation, warm_start
from linformer.training.meter import TrainMeter, peak_flops
from linformer.training.run_logs import MetricWriter
from linformer.training.trainer import evaluate, make_trainer, num_train_steps


def _eval_line(metrics) -> str:
  """An evaluation for the terminal; per-layer values stay in metrics.jsonl."""
  return ", ".join(f"eval {k} {v:.4g}" for k, v in metrics.items() if "/layer" not in k)


def _projection_init(config, source, workdir: str) -> str:
  """config.model.projection_init, with 'auto' made concrete: E and F that are new weights over
  attention imported from a full-attention checkpoint (a HF directory) start as mean pooling,
  close to the attention they replace; random N(0, 1/n) projections would scramble it. A run
  resumed keeps what it started with."""
  asked = config.model.get("projection_init", "normal")
  if asked != "auto":
    return asked
  m = config.model
  new_over_imported = (
    source is not None
    and source.kind == warm_start.HUGGINGFACE
    and m.attention == "linformer"
    and m.projection in ("learned", "random")
  )
  if not new_over_imported:
    return "normal"
  # Files only, no orbax manager: every process of a multi-host run passes here at its own pace,
  # and a manager would enter a barrier the others are not at.
  saved = checkpointing.read_saved_config(workdir)
  checkpoints = os.path.join(workdir, checkpointing.LATEST)
  if saved is not None and os.path.isdir(checkpoints) and os.listdir(checkpoints):
    return saved.get("model", {}).get("projection_init", "normal")  # older runs: 'normal'
  if jax.process_index() == 0:
    print(
      f"E and F are new weights over the attention of {source.path}: they start as mean pooling "
      "over windows of n/k positions (config.model.projection_init='auto'; 'normal' for "
      "N(0, 1/n))."
    )
  return "pool"


def _concrete_model(config, source=None, workdir: str = ""):
  """config.model.dtype='auto', scan_layers=None and projection_init='auto' made concrete for
  this platform, depth and source, so config.json records what ran (and a resume with another
  layer layout is refused)."""
  init = _projection_init(config, source, workdir)
  if init != config.model.get("projection_init", "normal"):
    config = config.copy_and_resolve_references()
    config.model.projection_init = init
  asked = config.model.get("dtype", "float32")
  dtype = resolve_dtype(asked, jax.default_backend())
  scan = validation.check_model(config).scanned
  if dtype != asked or config.model.get("scan_layers") is None:
    config = config.copy_and_resolve_references()
    config.model.dtype = dtype
    config.model.scan_layers = scan
  if jax.process_index() == 0:
    how = f" (config.model.dtype='auto' on {jax.default_backend()})" if dtype != asked else ""
    print(f"Computing in {dtype}{how}; parameters and optimizer state in float32.")
    if scan:
      print(f"The {config.model.num_layers} layers run as one scan (config.model.scan_layers).")
  return config


def train_and_evaluate(config, workdir: str, *, until_step: int | None = None) -> dict[str, Any]:
  """Trains `config.task` in `workdir`, resuming from its latest checkpoint if there is one.

  until_step: stop (with a checkpoint) after this step although the schedule runs to
  config.num_train_steps, e.g. to fit a cluster's time limit; the next start continues.
  Returns the last train and eval metrics.
  """
  # Everything is checked before anything is written (ConfigError: one line, field and fix).
  run = validation.check_run(config, workdir, until_step)
  mesh = partitioning.make_mesh(config.mesh)
  source = warm_start.open_source(config, workdir)
  if source is not None:
    config = source.apply_to(config)
    validation.check_model(config)  # the widths the checkpoint fixes
  config = validation.check_data(config, run, has_source=source is not None)
  config = _concrete_model(config, source, workdir)
  task = get_task(config)
  os.makedirs(workdir, exist_ok=True)
  checkpointing.check_or_write_config(workdir, config)
  manager = checkpointing.make_manager(workdir, config)
  task.setup(
    workdir,
    per_host_batch_size=config.batch_size // jax.process_count(),
    init_tokenizer=source.tokenizer if source else None,
  )
  total_steps = num_train_steps(config, task)
  latest = manager.latest_step()
  values = notes = None
  if latest is None and source is not None:
    values, notes = warm_start.load_values(source, task.model_config(), task.init_subtrees)
  imported = None
  if config.get("freeze_pretrained_steps"):
    imported = (
      [warm_start.dotted(k) for k in values]
      if values is not None
      else warm_start.read_imported(workdir)
    )
    if imported is None:
      raise ConfigError(
        f"config.freeze_pretrained_steps: {workdir} has no "
        f"{warm_start.RECORD_FILE} naming the imported weights; set "
        "freeze_pretrained_steps=0 to resume it."
      )
  trainer = make_trainer(config, task, mesh, total_steps, imported=imported)
  train_iter = task.train_iterator()
  best_manager = (
    checkpointing.make_manager(workdir, config, checkpointing.BEST) if task.main_metric else None
  )

  if latest is not None:
    if jax.process_index() == 0:
      print(f"Resuming {workdir} from the checkpoint at step {latest}.")
    state = checkpointing.restore(manager, latest, trainer.abstract_state(), train_iter)
    run_logs.trim_logs(workdir, latest)
  else:
    run_logs.trim_logs(workdir, -1)  # records of an attempt that died before its first checkpoint
    state = jax.jit(trainer.init_state, out_shardings=trainer.state_sharding)()
    if source is not None:
      state = warm_start.start_from(state, source, values, notes, workdir)
    if state.teacher is not None:
      state = state.replace(teacher=warm_start.teacher_weights(state.teacher, values, config))
  start = int(state.step)
  end = total_steps if until_step is None else min(until_step, total_steps)
  writer = MetricWriter(workdir)
  meter = TrainMeter(task, peak_flops(config, mesh))
  # Model FLOPs of a step, by the batch's length (fine-tuning's length buckets vary it).
  step_flops = functools.cache(
    lambda n: config.batch_size * task.train_flops_per_sequence(trainer.model_cfg, n)
  )
  last_good = latest
  result: dict[str, Any] = {}
  bar = tqdm(
    total=end,
    initial=start,
    desc="train",
    unit="step",
    dynamic_ncols=True,
    disable=jax.process_index() != 0,
  )
  try:
    if start == 0 and config.get("eval_at_start"):  # e.g. a converted model before training
      result["eval"] = evaluate(trainer, state, config.num_eval_steps)
      writer.write(0, "eval", result["eval"])
      run_logs.record_eval(workdir, 0, result["eval"], None)
      bar.write(f"step 0: {_eval_line(result['eval'])}")
    for step in range(start + 1, end + 1):
      batch = task.fit_batch(next(train_iter))
      state, metrics = trainer.step_fn(step)(state, partitioning.global_batch(batch, mesh))
      width = np.shape(batch["input_ids"])[1]
      meter.add(metrics, task.tokens_in(batch) * jax.process_count(), step_flops(width))
      bar.update(1)
      is_last = step == end
      transfer_ends = step == trainer.transfer_steps
      if step % config.log_every_steps == 0 or is_last or transfer_ends:
        summary = meter.flush(step, last_good)  # never mixes transfer and MLM steps
        kind = "transfer" if step <= trainer.transfer_steps else "train"
        writer.write(step, kind, summary)
        result[kind] = summary
        bar.set_postfix(loss=f"{summary['loss']:.3f}", refresh=False)
      if step % config.eval_every_steps == 0 or step == total_steps or transfer_ends:
        result["eval"] = evaluate(trainer, state, config.num_eval_steps)
        writer.write(step, "eval", result["eval"])
        bar.write(f"step {step}: {_eval_line(result['eval'])}")
        if run_logs.record_eval(workdir, step, result["eval"], task.main_metric) and best_manager:
          meter.check(step, last_good)
          checkpointing.save(best_manager, step, state, None)
      if step % config.checkpoint_every_steps == 0 or is_last:
        meter.check(step, last_good)  # never save a diverged state
        checkpointing.save(manager, step, state, train_iter)
        last_good = step
  finally:
    bar.close()
    manager.wait_until_finished()
    if best_manager:
      best_manager.wait_until_finished()
    writer.close()
  result["state"] = state
  result["trainer"] = trainer
  return result
