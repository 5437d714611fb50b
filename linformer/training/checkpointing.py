"""Orbax checkpoints of the train state together with the Grain iterator, and the run's config.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run
killed mid-write (SIGKILL included) leaves an unfinished directory that is never restored: the
manager only lists finalized steps. Saving is asynchronous: arrays are copied to host memory,
then written while training goes on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import grain
import jax
import orbax.checkpoint as ocp

from linformer.config import ConfigError

CONFIG_FILE = "config.json"
# Fields that may change when a run resumes: schedule length (to extend a run), logging and
# checkpoint cadence, evaluation size, mesh shape and data-loading workers.
MAY_CHANGE = (
  "num_train_steps",
  "eval_every_steps",
  "checkpoint_every_steps",
  "log_every_steps",
  "num_eval_steps",
  "max_checkpoints_to_keep",
  "mesh",
  "data.num_workers",
  "async_checkpointing",
  "init_from",
  "model.attention_impl",
  "model.remat",
  "peak_flops",
  "eval_at_start",
)


# Fields added after runs were written: a saved config without one ran with this value.
ADDED_FIELDS = {
  "model.projection_init": "normal",
  "init_from": "",
  "freeze_pretrained_steps": 0,
  "freeze_lr": None,
}

LATEST, BEST = "checkpoints", "best"


def make_manager(
  workdir: str, config=None, kind: str = LATEST, create: bool = True
) -> ocp.CheckpointManager:
  """The run's periodic checkpoints (`LATEST`, resumed from), or the single checkpoint with
  the best main metric so far (`BEST`, for fine-tuning). Without a `config` (reading another
  run's checkpoints), nothing is ever deleted."""
  keep = None if config is None else config.max_checkpoints_to_keep
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep if kind == LATEST else 1,
    create=create,
    enable_async_checkpointing=True if config is None else config.get("async_checkpointing", True),
  )
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), kind), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
  args = {"state": ocp.args.StandardSave(state)}
  if data_iterator is not None:
    args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**args), force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iterator=None):
  """Restores onto the shardings of `abstract_state` (any mesh shape) and resets the iterator."""
  args = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  return manager.restore(step, args=ocp.args.Composite(**args))["state"]


def restore_raw(manager: ocp.CheckpointManager, step: int) -> dict:
  """A checkpoint's train state as nested dicts of arrays, without a target structure: for
  taking parts of another run (the encoder of a pretraining run)."""
  return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


def _flatten(d: Mapping, prefix: str = "") -> dict:
  out = {}
  for key, value in d.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(_flatten(value, path + "."))
    else:
      out[path] = value
  return out


def check_or_write_config(workdir: str, config) -> None:
  """Writes the run's config once; a later start with an incompatible config is an error."""
  path = os.path.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    new = _flatten(current)
    old = {**{k: v for k, v in ADDED_FIELDS.items() if k in new}, **_flatten(saved)}
    allowed = lambda k: any(k == m or k.startswith(m + ".") for m in MAY_CHANGE)
    differ = sorted(
      k
      for k in set(new) | set(old)
      if not allowed(k) and new.get(k, "<missing>") != old.get(k, "<missing>")
    )
    if differ:
      details = "; ".join(
        f"{k}: workdir has {old.get(k, '<missing>')!r}, asked {new.get(k, '<missing>')!r}"
        for k in differ
      )
      raise ConfigError(
        f"The workdir {workdir} holds a run with a different config ({details}). Resume it "
        "with the same values, or start the new run in a new --workdir."
      )
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(current, f, indent=2, sort_keys=True)


def load_config(workdir: str):
  """The config a run in `workdir` was started with."""
  import ml_collections

  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{workdir} holds no run ({CONFIG_FILE} is missing): pass the --workdir of a train.py run."
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
