"""The one training loop: pretraining and fine-tuning differ only in their `Task`.

Every step is one `jax.jit` call with explicit shardings over a (data, fsdp, tensor) mesh and a
donated train state. Randomness (dropout) comes from (seed, step), data order from the Grain
iterator whose state is checkpointed with the model, so a resumed run continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from tqdm import tqdm

from linformer.config import ConfigError
from linformer.tasks import Task, get_task
from linformer.training import checkpointing, partitioning
from linformer.training.metric_writer import MetricWriter, read_metrics
from linformer.training.optimizer import make_optimizer


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite."""


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # nnx.State of trainable parameters
  rest: Any  # nnx.State of fixed variables (e.g. random projections)
  opt_state: Any
  rng: jax.Array  # raw uint32 key: dropout keys are fold_in(rng, step)


def check_batch_config(config, mesh) -> None:
  dp = partitioning.data_parallel_size(mesh)
  accum = config.grad_accum_steps
  if config.batch_size % (accum * dp):
    raise ConfigError(
        f"config.batch_size={config.batch_size} must be divisible by grad_accum_steps={accum} "
        f"times the data-parallel size {dp} (mesh data x fsdp = "
        f"{mesh.shape['data']} x {mesh.shape['fsdp']}). Fix: use a batch size that is a "
        f"multiple of {accum * dp}."
    )
  if config.batch_size % jax.process_count():
    raise ConfigError(f"config.batch_size={config.batch_size} must be divisible by the number "
                      f"of processes {jax.process_count()}.")


@dataclasses.dataclass
class Trainer:
  """The compiled functions and shardings of one run."""

  task: Task
  mesh: jax.sharding.Mesh
  graphdef: Any
  state_sharding: Any
  train_step: Any
  eval_step: Any
  init_state: Any
  schedule: Any

  def abstract_state(self):
    abstract = jax.eval_shape(self.init_state)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, self.state_sharding)

  def model(self, state: TrainState):
    return nnx.merge(self.graphdef, state.params, state.rest)


def num_train_steps(config, task: Task) -> int:
  """config.num_train_steps, or num_epochs over the task's train split when steps is -1."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  examples = task.num_train_examples()
  if not config.get("num_epochs") or not examples:
    raise ConfigError("config.num_train_steps=-1 needs config.num_epochs and a task that "
                      "knows its train split size; set num_train_steps.")
  return max(1, int(math.ceil(config.num_epochs * examples / config.batch_size)))


def make_trainer(config, task: Task, mesh, total_steps: int | None = None) -> Trainer:
  model_cfg = task.model_config()
  total_steps = total_steps or config.num_train_steps
  tx, schedule = make_optimizer(config.optimizer, total_steps)
  abstract_model = nnx.eval_shape(lambda: task.make_model(model_cfg, nnx.Rngs(0)))
  graphdef, _, _ = nnx.split(abstract_model, nnx.Param, ...)
  accum = config.grad_accum_steps

  def init_state():
    params_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))
    model = task.make_model(model_cfg, nnx.Rngs(params=params_key))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                      opt_state=tx.init(params), rng=dropout_key)

  state_sharding = partitioning.state_shardings(jax.eval_shape(init_state), mesh)
  batch_sharding = partitioning.batch_sharding(mesh)

  def grads_and_sums(state, batch, index):
    key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), index)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state.rest)
      sums = task.loss(model, batch, deterministic=False, rngs=nnx.Rngs(dropout=key))
      return sums["loss"], sums

    (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return grads, sums

  def train_step(state: TrainState, batch):
    if accum == 1:
      grads, sums = grads_and_sums(state, batch, 0)
    else:
      # Micro-batch i takes rows i, i + accum, ...: every device keeps its own rows.
      micro = jax.tree.map(lambda x: x.reshape(-1, accum, *x.shape[1:]), batch)

      def body(carry, i):
        mb = jax.tree.map(lambda x: x[:, i], micro)
        g, s = grads_and_sums(state, mb, i)
        return jax.tree.map(jnp.add, carry, (g, s)), None

      zeros = jax.eval_shape(lambda: grads_and_sums(state, jax.tree.map(lambda x: x[:, 0],
                                                                         micro), 0))
      zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), zeros)
      (grads, sums), _ = jax.lax.scan(body, zeros, jnp.arange(accum))
    # The loss is a sum over predictions; normalise once for the whole batch.
    grads = jax.tree.map(lambda g: g / jnp.maximum(sums["weight"], 1.0), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**sums, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
               "param_norm": optax.tree.norm(params)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  def eval_step(state: TrainState, batch):
    return task.eval_outputs(nnx.merge(graphdef, state.params, state.rest), batch)

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return Trainer(
      task=task, mesh=mesh, graphdef=graphdef, state_sharding=state_sharding, schedule=schedule,
      init_state=init_state,
      train_step=jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                         out_shardings=(state_sharding, replicated), donate_argnums=0),
      eval_step=jax.jit(eval_step, in_shardings=(state_sharding, batch_sharding),
                        out_shardings=replicated),
  )


def evaluate(trainer: Trainer, state: TrainState, num_batches: int = -1,
             splits: list[str] | None = None) -> dict[str, float]:
  """Metrics on the task's eval splits (or `splits`), at most `num_batches` batches each."""
  outputs = {}
  for split in splits or trainer.task.eval_splits():
    outputs[split] = []
    for i, batch in enumerate(trainer.task.eval_batches(split)):
      if 0 <= num_batches <= i:
        break
      out = trainer.eval_step(state, partitioning.global_batch(batch, trainer.mesh))
      outputs[split].append(jax.tree.map(np.asarray, out))
    if not outputs[split]:
      raise ConfigError(f"The eval split {split!r} produced no batch; check config.data.")
  return trainer.task.eval_summary(outputs)


class _TrainMetrics:
  """Per-step device metrics, fetched to host only at log and checkpoint time (no per-step
  sync), and checked for NaN before anything is saved."""

  def __init__(self, task: Task):
    self.task, self.pending, self.tokens, self.start = task, [], 0, time.time()

  def add(self, metrics, tokens):
    self.pending.append(metrics)
    self.tokens += tokens

  def check(self, step: int, last_good: int | None) -> list[dict]:
    """Fetches the pending metrics; raises if any step's loss is not finite."""
    fetched = jax.device_get(self.pending)
    first = step - len(fetched) + 1
    for i, m in enumerate(fetched):
      if not all(np.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
        raise TrainingDiverged(
            f"Training diverged at step {first + i}: loss {m['loss']}, gradient norm "
            f"{m['grad_norm']}, parameter norm {m['param_norm']}. "
            f"The last good checkpoint (step {last_good}) was kept. Lower config.optimizer.lr, "
            "raise config.optimizer.warmup_steps, or use float32 (config.model.dtype)."
        )
    return fetched

  def flush(self, step: int, last_good: int | None) -> dict[str, float]:
    fetched = self.check(step, last_good)
    summary = self.task.summarize(fetched)
    elapsed = time.time() - self.start
    summary.update(grad_norm=float(np.mean([m["grad_norm"] for m in fetched])),
                   param_norm=float(fetched[-1]["param_norm"]),
                   lr=float(fetched[-1]["lr"]), tokens_per_sec=self.tokens / max(elapsed, 1e-9))
    self.pending, self.tokens, self.start = [], 0, time.time()
    return summary


def _trim_metrics(workdir: str, step: int) -> None:
  """Drops records past the restored step, so a resumed run's metrics have no duplicates."""
  if jax.process_index() != 0:
    return
  kept = [r for r in read_metrics(workdir) if r["step"] <= step]
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
  results = _read_results(workdir)
  results["evaluations"] = [r for r in results["evaluations"] if r["step"] <= step]
  if results.get("best") and results["best"]["step"] > step:
    results["best"] = None
  _write_results(workdir, results)


RESULTS_FILE = "results.json"


def _read_results(workdir: str) -> dict:
  path = os.path.join(workdir, RESULTS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"main_metric": None, "best": None, "evaluations": []}


def _write_results(workdir: str, results: dict) -> None:
  if jax.process_index() == 0:
    tmp = os.path.join(workdir, RESULTS_FILE + ".tmp")
    with open(tmp, "w") as f:
      json.dump(results, f, indent=2)
    os.replace(tmp, os.path.join(workdir, RESULTS_FILE))


def _record_eval(workdir: str, step: int, metrics: dict, main_metric: str | None) -> bool:
  """Adds an evaluation to results.json; True if it is the best so far by the main metric."""
  results = _read_results(workdir)
  results["main_metric"] = main_metric
  results["evaluations"].append({"step": step, **metrics})
  value = metrics.get(main_metric) if main_metric else None
  best = results.get("best")
  improved = value is not None and math.isfinite(value) and (
      best is None or value > best[main_metric])
  if improved:
    results["best"] = {"step": step, **metrics}
  _write_results(workdir, results)
  return improved


def train_and_evaluate(config, workdir: str, *, until_step: int | None = None
                       ) -> dict[str, Any]:
  """Trains `config.task` in `workdir`, resuming from its latest checkpoint if there is one.

  until_step: stop (with a checkpoint) after this step although the schedule runs to
  config.num_train_steps, e.g. to fit a cluster's time limit; the next start continues.
  Returns the last train and eval metrics.
  """
  mesh = partitioning.make_mesh(config.mesh)
  check_batch_config(config, mesh)
  os.makedirs(workdir, exist_ok=True)
  task = get_task(config)
  checkpointing.check_or_write_config(workdir, config)
  manager = checkpointing.make_manager(workdir, config)
  task.setup(workdir, per_host_batch_size=config.batch_size // jax.process_count())
  total_steps = num_train_steps(config, task)
  trainer = make_trainer(config, task, mesh, total_steps)
  train_iter = task.train_iterator()
  best_manager = (checkpointing.make_manager(workdir, config, checkpointing.BEST)
                  if task.main_metric else None)

  latest = manager.latest_step()
  if latest is not None:
    if jax.process_index() == 0:
      print(f"Resuming {workdir} from the checkpoint at step {latest}.")
    state = checkpointing.restore(manager, latest, trainer.abstract_state(), train_iter)
    _trim_metrics(workdir, latest)
  else:
    state = jax.jit(trainer.init_state, out_shardings=trainer.state_sharding)()
    state = task.initialize(state, trainer)
  start = int(state.step)
  end = total_steps if until_step is None else min(until_step, total_steps)
  writer = MetricWriter(workdir)
  meter = _TrainMetrics(task)
  last_good = latest
  result: dict[str, Any] = {}
  bar = tqdm(total=end, initial=start, desc="train", unit="step", dynamic_ncols=True,
             disable=jax.process_index() != 0)
  try:
    for step in range(start + 1, end + 1):
      batch = next(train_iter)
      state, metrics = trainer.train_step(state, partitioning.global_batch(batch, mesh))
      meter.add(metrics, task.tokens_in(batch) * jax.process_count())
      bar.update(1)
      is_last = step == end
      if step % config.log_every_steps == 0 or is_last:
        summary = meter.flush(step, last_good)
        writer.write(step, "train", summary)
        result["train"] = summary
        bar.set_postfix(loss=f"{summary['loss']:.3f}", refresh=False)
      if step % config.eval_every_steps == 0 or step == total_steps:
        result["eval"] = evaluate(trainer, state, config.num_eval_steps)
        writer.write(step, "eval", result["eval"])
        bar.write(f"step {step}: " + ", ".join(f"eval {k} {v:.4g}"
                                                for k, v in result["eval"].items()))
        if _record_eval(workdir, step, result["eval"], task.main_metric) and best_manager:
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


def restore_run(workdir: str, step: int | None = None, config=None, best: bool = False):
  """(config, trainer, state) of a run's checkpoint (the latest unless `step`, or the best by
  the task's main metric), for evaluation and prediction. `config` defaults to the run's own."""
  config = checkpointing.load_config(workdir) if config is None else config
  mesh = partitioning.make_mesh(config.mesh)
  task = get_task(config)
  manager = checkpointing.make_manager(
      workdir, config, checkpointing.BEST if best else checkpointing.LATEST)
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f"{workdir} has no checkpoint yet: train it first (train.py).")
  step = max(steps) if step is None else step
  if step not in steps:
    raise ValueError(f"{workdir} has no checkpoint at step {step}; it has {sorted(steps)}.")
  task.setup(workdir, per_host_batch_size=max(config.batch_size // jax.process_count(), 1))
  # The schedule's length changes no shape; -1 (epochs) would need the dataset's size.
  trainer = make_trainer(config, task, mesh, max(config.num_train_steps, 10**9))
  state = checkpointing.restore(manager, step, trainer.abstract_state())
  return config, trainer, state
