"""The compiled functions of one run: its train state, the jitted train, transfer and eval
steps over the mesh, and evaluation over a task's splits.

Every step is one `jax.jit` call with explicit shardings over a (data, fsdp, tensor) mesh and a
donated train state. Randomness (dropout) comes from (seed, step), so a resumed run computes
the same steps as an uninterrupted one. Parameters fall into optimizer groups (the imported
weights, the new ones, Linformer's E/F) that start training at different steps: attention
transfer first trains E/F alone, a freeze phase then keeps the imported weights fixed.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from tqdm import tqdm

from linformer import axes
from linformer.config import ConfigError
from linformer.tasks import Task
from linformer.training import optimizer, partitioning, warm_start
from linformer.training.optimizer import make_optimizer


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # nnx.State of trainable parameters
  rest: Any  # nnx.State of fixed variables (e.g. random projections)
  opt_state: Any
  rng: jax.Array  # raw uint32 key: dropout keys are fold_in(rng, step)
  # The frozen full-attention teacher of attention transfer and distillation (None without).
  teacher: Any = None


@dataclasses.dataclass
class Trainer:
  """The compiled functions and shardings of one run."""

  task: Task
  mesh: jax.sharding.Mesh
  model_cfg: Any
  graphdef: Any
  state_sharding: Any
  train_step: Any
  eval_step: Any
  init_state: Any
  schedule: Any
  transfer_step: Any = None  # the attention-transfer steps' function (config.transfer_steps)
  transfer_steps: int = 0

  def step_fn(self, step: int):
    """The jitted function of (1-based) `step`."""
    return self.transfer_step if step <= self.transfer_steps else self.train_step

  def abstract_state(self):
    abstract = jax.eval_shape(self.init_state)
    return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.state_sharding
    )

  def model(self, state: TrainState):
    return nnx.merge(self.graphdef, state.params, state.rest)


def num_train_steps(config, task: Task) -> int:
  """config.num_train_steps, or num_epochs over the task's train split when steps is -1."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  examples = task.num_train_examples()
  if not config.get("num_epochs") or not examples:
    raise ConfigError(
      "config.num_train_steps=-1 needs config.num_epochs and a task that "
      "knows its train split size; set num_train_steps."
    )
  return max(1, int(math.ceil(config.num_epochs * examples / config.batch_size)))


def uses_teacher(config) -> bool:
  """Attention transfer or distillation: the run keeps a frozen full-attention teacher."""
  d = config.get("distill") or {}
  return bool(config.get("transfer_steps")) or bool(d.get("alpha") or d.get("beta"))


def make_trainer(
  config, task: Task, mesh, total_steps: int | None = None, imported: list[str] | None = None
) -> Trainer:
  """The jitted steps of a run. `imported`: names of the warm-started parameters (e.g.
  'encoder/layers/0/mlp_in/kernel'), which stay fixed for the first
  `config.freeze_pretrained_steps` steps after any `config.transfer_steps`."""
  model_cfg = task.model_config()
  total_steps = total_steps or config.num_train_steps
  abstract_model = nnx.eval_shape(lambda: task.make_model(model_cfg, nnx.Rngs(0)))
  graphdef, abstract_params, _ = nnx.split(abstract_model, nnx.Param, ...)
  freeze_steps = config.get("freeze_pretrained_steps") or 0
  transfer_steps = config.get("transfer_steps") or 0
  labels = (
    _labels(abstract_params, imported, transfer_steps) if freeze_steps or transfer_steps else None
  )
  tx, schedule = make_optimizer(
    config.optimizer,
    total_steps,
    labels=labels,
    freeze_steps=freeze_steps,
    freeze_lr=config.get("freeze_lr"),
    transfer_steps=transfer_steps,
    transfer_lr=config.get("transfer_lr"),
  )
  trainable = _trainable_fn(labels, transfer_steps, freeze_steps)
  accum = config.grad_accum_steps
  teacher_cfg = None
  if uses_teacher(config):  # its layers stacked as the student's: one layout of the weights
    teacher_cfg = dataclasses.replace(model_cfg, attention="full", scan_layers=model_cfg.scanned)
  teacher_graphdef = None
  if teacher_cfg is not None:
    teacher_graphdef = nnx.graphdef(
      nnx.eval_shape(lambda: task.make_model(teacher_cfg, nnx.Rngs(0)))
    )
  distilling = teacher_cfg is not None and any(
    (config.get("distill") or {}).get(f) for f in ("alpha", "beta")
  )

  def init_state():
    params_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))
    model = task.make_model(model_cfg, nnx.Rngs(params=params_key))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    teacher = None
    if teacher_cfg is not None:  # its weights come from config.init_from (_warm_start)
      teacher = nnx.state(task.make_model(teacher_cfg, nnx.Rngs(params=params_key)))
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      rest=rest,
      opt_state=tx.init(params),
      rng=dropout_key,
      teacher=teacher,
    )

  abstract_state = jax.eval_shape(init_state)
  state_sharding = partitioning.state_shardings(abstract_state, mesh, config.mesh.get("rules"))
  batch_sharding = partitioning.batch_sharding(mesh)

  def teacher_of(state):
    return None if teacher_graphdef is None else nnx.merge(teacher_graphdef, state.teacher)

  def train_loss(model, teacher, batch, key):
    rngs = nnx.Rngs(dropout=key)
    if distilling:
      return task.distill_loss(model, teacher, batch, deterministic=False, rngs=rngs)
    return task.loss(model, batch, deterministic=False, rngs=rngs)

  def transfer_loss(model, teacher, batch, key):
    del key  # no dropout: the student's attention is fitted to the teacher's, both exact
    return task.transfer_loss(model, teacher, batch)

  def make_step(loss_of):
    def grads_and_sums(state, batch, index):
      key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), index)
      teacher = teacher_of(state)

      def loss_fn(params):
        model = nnx.merge(graphdef, params, state.rest)
        sums = loss_of(model, teacher, batch, key)
        return sums["loss"], sums

      (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      return grads, sums

    def train_step(state: TrainState, batch):
      with axes.activation_sharding(mesh):  # activations keep their rows on their devices
        return _train_step(state, batch)

    def _train_step(state: TrainState, batch):
      if accum == 1:
        grads, sums = grads_and_sums(state, batch, 0)
      else:
        # Micro-batch i takes rows i, i + accum, ...: every device keeps its own rows.
        micro = jax.tree.map(lambda x: x.reshape(-1, accum, *x.shape[1:]), batch)

        # The summed gradients are sharded as the parameters are (else XLA may replicate the
        # carry: a whole model's gradients on every device).
        as_params = lambda g: axes.constrain_like(g, state_sharding.params)

        def body(carry, i):
          mb = jax.tree.map(lambda x: x[:, i], micro)
          g, s = grads_and_sums(state, mb, i)
          g, s = jax.tree.map(jnp.add, carry, (g, s))
          return (as_params(g), s), None

        zeros = jax.eval_shape(
          lambda: grads_and_sums(state, jax.tree.map(lambda x: x[:, 0], micro), 0)
        )
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), zeros)
        zeros = (as_params(zeros[0]), zeros[1])
        (grads, sums), _ = jax.lax.scan(body, zeros, jnp.arange(accum))
      # The loss is a sum over predictions; normalise once for the whole batch.
      grads = jax.tree.map(lambda g: g / jnp.maximum(sums["weight"], 1.0), grads)
      # (Named scopes label the compiled operations for benchmarks/profile_step.py.)
      with jax.named_scope("optimizer"):
        grads = trainable(state.step, grads)  # what does not train is out of the clipping norm
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = trainable(state.step, updates)  # frozen weights stay bit-identical
        params = optax.apply_updates(state.params, updates)
      with jax.named_scope("metrics"):
        metrics = {
          **sums,
          "grad_norm": optax.tree.norm(grads),
          "lr": schedule(state.step),
          "param_norm": optax.tree.norm(params),
        }
      new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
      # A step that is not finite leaves the state as it was: nothing diverged is ever kept, and
      # the loop stops at the next fetch of the metrics, naming this step.
      with jax.named_scope("divergence_check"):
        finite = jnp.isfinite(sums["loss"]) & jnp.isfinite(metrics["grad_norm"])
        finite &= jnp.isfinite(metrics["param_norm"])
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
      return new_state, {**metrics, "finite": finite}

    return jax.jit(
      train_step,
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, replicated),
      donate_argnums=0,
    )

  def eval_step(state: TrainState, batch):
    model = nnx.merge(graphdef, state.params, state.rest)
    with axes.activation_sharding(mesh):
      outputs = task.eval_outputs(model, batch)
      if teacher_graphdef is not None:  # how far each layer's attention is from the teacher's
        outputs = {**outputs, **task.teacher_eval_outputs(model, teacher_of(state), batch)}
    return outputs

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return Trainer(
    task=task,
    mesh=mesh,
    model_cfg=model_cfg,
    graphdef=graphdef,
    state_sharding=state_sharding,
    schedule=schedule,
    init_state=init_state,
    train_step=make_step(train_loss),
    transfer_step=make_step(transfer_loss) if transfer_steps else None,
    transfer_steps=transfer_steps,
    eval_step=jax.jit(
      eval_step, in_shardings=(state_sharding, batch_sharding), out_shardings=replicated
    ),
  )


def is_projection(name: str) -> bool:
  """Whether a parameter is one of Linformer's E / F (what attention transfer trains)."""
  return any(part in ("proj_k", "proj_v") for part in name.split("/"))


def _labels(abstract_params, imported: list[str] | None, transfer_steps: int):
  """Each parameter's optimizer group (optimizer.PRETRAINED, NEW or PROJECTION)."""
  names = set(imported or ())

  def label(path, _):
    name = warm_start.dotted(warm_start.path_key(path))
    if transfer_steps and is_projection(name):
      return optimizer.PROJECTION
    if imported is None or name in names:  # without a freeze phase only E/F are set apart
      return optimizer.PRETRAINED
    return optimizer.NEW

  return jax.tree_util.tree_map_with_path(label, abstract_params)


def _trainable_fn(labels, transfer_steps: int, freeze_steps: int):
  """(step, tree) -> tree with what does not train at `step` zeroed: everything but E/F during
  attention transfer, the imported weights during the freeze phase after it."""
  if labels is None:
    return lambda step, tree: tree
  ends = {
    optimizer.PROJECTION: 0,
    optimizer.NEW: transfer_steps,
    optimizer.PRETRAINED: transfer_steps + freeze_steps,
  }

  def trainable(step, tree):
    return jax.tree.map(
      lambda x, group: jnp.where(step < ends[group], jnp.zeros_like(x), x) if ends[group] else x,
      tree,
      labels,
    )

  return trainable


def evaluate(
  trainer: Trainer, state: TrainState, num_batches: int = -1, splits: list[str] | None = None
) -> dict[str, float]:
  """Metrics on the task's eval splits (or `splits`), at most `num_batches` batches each."""
  outputs = {}
  for split in splits or trainer.task.eval_splits():
    outputs[split] = eval_outputs(
      trainer,
      state,
      trainer.task.eval_batches(split),
      num_batches,
      total=trainer.task.num_eval_batches(split),
      desc=f"eval {split}",
    )
    if not outputs[split]:
      raise ConfigError(f"The eval split {split!r} produced no batch; check config.data.")
  return trainer.task.eval_summary(outputs)


def eval_outputs(
  trainer: Trainer,
  state: TrainState,
  batches,
  num_batches: int = -1,
  *,
  total: int | None = None,
  desc: str = "eval",
) -> list[dict[str, np.ndarray]]:
  """The task's `eval_outputs` of each batch (at most `num_batches`; -1: all) on the host, with
  a progress bar over `total` batches (None: unknown): on a terminal below the training bar and
  cleared when done; in a log file (nohup) on lines of its own, at most every 30 s."""
  if num_batches >= 0:
    total = num_batches if total is None else min(total, num_batches)
  outputs = []
  terminal = sys.stderr.isatty()
  bar = tqdm(
    total=total,
    desc=desc,
    unit="batch",
    leave=not terminal,
    position=None if terminal else 0,  # nested bars move the cursor: garbage in a file
    mininterval=0.1 if terminal else 30,
    dynamic_ncols=True,
    disable=jax.process_index() != 0,
  )
  with bar:
    for i, batch in enumerate(batches):
      if 0 <= num_batches <= i:
        break
      batch = partitioning.global_batch(trainer.task.fit_batch(batch), trainer.mesh)
      out = trainer.eval_step(state, batch)
      outputs.append(jax.tree.map(np.asarray, out))
      bar.update(1)
  return outputs
