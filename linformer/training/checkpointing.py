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
# checkpoint cadence, evaluation size, mesh shape, data-loading workers and how the same
# parameters are computed (dtype, attention implementation, remat).
MAY_CHANGE = (
  "num_train_steps",
  "eval_every_steps",
  "checkpoint_every_steps",
  "log_every_steps",
  "num_eval_steps",
  "max_checkpoints_to_keep",
  "mesh",
  "data.num_workers",
  "data.length_buckets",  # the work per batch, not the results (padding is exact)
  "async_checkpointing",
  "init_from",
  "model.attention_impl",
  "model.remat",
  "model.remat_policy",
  "model.dtype",  # compute only (parameters are float32): 'auto' resumes a CPU run on a GPU
  "peak_flops",
  "eval_at_start",
)


# Fields added after runs were written: a saved config without one ran with this value.
ADDED_FIELDS = {
  "model.projection_init": "normal",
  "model.causal": False,
  "model.segment_len": 0,
  "init_from": "",
  "freeze_pretrained_steps": 0,
  "freeze_lr": None,
  # Until activation_dropout_rate existed, dropout_rate (0.1 by default) also hit the MLP's GELU.
  "model.activation_dropout_rate": 0.1,
  "transfer_steps": 0,
  "transfer_lr": None,
  "distill.alpha": 0.0,
  "distill.beta": 0.0,
  "distill.temperature": 1.0,
  "model.vocab_multiple": 1,
  "model.remat_policy": "full",  # the embedding table had exactly vocab_size rows
  "model.scan_layers": False,  # layers were a list: checkpoints hold them one by one
  # LSH attention's fields, read by attention='lsh' only (which older runs cannot have used).
  "model.lsh_buckets": None,
  "model.lsh_rounds": 4,
  "model.lsh_chunk_len": 64,
  "model.lsh_seed": 0,
  # Pretraining from JSON lines / CSV files, and markup stripping.
  "data.text_field": "text",
  "data.strip_markup": False,
  "data.length_buckets": "none",  # every batch was padded to n (may change on resume)
}

LATEST, BEST = "checkpoints", "best"


# config.data fields that hold paths or globs, stored absolute (`absolute_data_paths`).
DATA_PATH_FIELDS = (
  "files",
  "text_files_train_patterns",
  "text_files_validation_patterns",
  "tokenizer",
  "data_dir",
  "cache_dir",
)


def _is_data_path(key: str) -> bool:
  parts = key.split(".")
  return len(parts) >= 2 and parts[0] == "data" and parts[1] in DATA_PATH_FIELDS


def _absolute(value):
  if isinstance(value, str):
    return os.path.abspath(os.path.expanduser(value)) if value else value
  if isinstance(value, (list, tuple)):
    return type(value)(_absolute(v) for v in value)
  return value


def absolute_data_paths(config):
  """The config with every path of config.data made absolute, so that config.json names the
  same files from any directory (eval.py or fine-tuning of the run started elsewhere)."""
  d = config.data
  changed = {}
  for name in DATA_PATH_FIELDS:
    value = d.get(name)
    if hasattr(value, "items"):  # config.data.files: split -> path
      new = {k: _absolute(v) for k, v in value.items()}
      if new != dict(value):
        changed[name] = new
    elif _absolute(value) != value:
      changed[name] = _absolute(value)
  if not changed:
    return config
  config = config.copy_and_resolve_references()
  for name, value in changed.items():
    if hasattr(value, "items"):
      for k, v in value.items():
        config.data[name][k] = v
    else:
      config.data[name] = value
  return config


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
  taking parts of another run (the encoder of a pretraining run). Each array is read whole
  onto this process's first device, whatever the mesh and process count that wrote it (orbax
  refuses a restore without a target on another topology)."""
  path = os.path.join(str(manager.directory), str(step), "state")
  metadata = ocp.StandardCheckpointer().metadata(path)
  tree = getattr(metadata, "item_metadata", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device) if hasattr(a, "shape") else a,
    tree,
  )
  args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
  return manager.restore(step, args=args)["state"]


def _flatten(d: Mapping, prefix: str = "") -> dict:
  out = {}
  for key, value in d.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(_flatten(value, path + "."))
    else:
      out[path] = value
  return out


# Fields that decide the tokenizer a run trains or copies into {workdir}/tokenizer/.
TOKENIZER_FIELDS = ("data", "init_from")


def latest_step(workdir: str, kind: str = LATEST) -> int | None:
  """The newest finalized checkpoint step in `workdir` (None if none), creating nothing."""
  if not os.path.isdir(os.path.join(os.path.abspath(workdir), kind)):
    return None
  return make_manager(workdir, None, kind, create=False).latest_step()


def read_saved_config(workdir: str) -> dict | None:
  """The config.json a run in `workdir` was started with, or None if it has none.

  config.json is written atomically, but a kill while an older version wrote it may have left it
  torn (not valid JSON). Without a checkpoint nothing depends on it, so it counts as absent (the
  start rewrites it); with one it is a ConfigError saying how to repair it.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      saved = json.load(f)
    if not isinstance(saved, dict):
      raise ValueError("not a JSON object")
    return saved
  except (ValueError, UnicodeDecodeError) as e:
    if latest_step(workdir) is None:
      return None
    raise ConfigError(
      f"{path} is torn or not a config ({type(e).__name__}: {e}) and the workdir holds "
      "checkpoints. Fix: restore config.json from a copy, or delete it and rerun the run's "
      "original train.py command (the config it gives is saved again)."
    ) from None


def _write_json(path: str, value) -> None:
  """Writes `value` atomically: a kill leaves the old file or the new one, never a torn one."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def check_or_write_config(workdir: str, config) -> None:
  """Writes the run's config once; a later start with an incompatible config is an error.

  Until the run's first checkpoint nothing depends on config.json, so a start with another config
  rewrites it (a corrected command after a failed start), unless the workdir already holds a
  tokenizer made for other data fields.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json_best_effort())
  saved = read_saved_config(workdir)
  if saved is not None:
    new = _flatten(current)
    old = {**{k: v for k, v in ADDED_FIELDS.items() if k in new}, **_flatten(saved)}
    # A run saved with relative data paths (before they were stored absolute) resumes from
    # the directory it was started in.
    old = {k: _absolute(v) if _is_data_path(k) else v for k, v in old.items()}
    allowed = lambda k: any(k == m or k.startswith(m + ".") for m in MAY_CHANGE)
    differ = sorted(
      k
      for k in set(new) | set(old)
      if not allowed(k) and new.get(k, "<missing>") != old.get(k, "<missing>")
    )
    tokenizer = os.path.join(workdir, "tokenizer")
    if differ and latest_step(workdir) is None:  # nothing depends on config.json yet
      made = os.path.isdir(tokenizer) and os.listdir(tokenizer)
      differ = [k for k in differ if made and k.split(".")[0] in TOKENIZER_FIELDS]
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
    _write_json(path, current)


def load_config(workdir: str):
  """The config a run in `workdir` was started with, fields added since filled with what it ran
  with (ADDED_FIELDS); a ConfigError naming the workdir if it holds no run or its config.json
  is torn."""
  import ml_collections

  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isdir(workdir):
    raise ConfigError(
      f"--workdir={workdir}: no such directory. Fix: pass the --workdir of a train.py run."
    )
  if not os.path.exists(path):
    raise ConfigError(
      f"--workdir={workdir} holds no run ({CONFIG_FILE} is missing). Fix: pass the --workdir "
      "of a train.py run."
    )
  try:
    with open(path) as f:
      saved = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise ConfigError(
      f"{path} is torn or not a config ({type(e).__name__}: {e}). Fix: restore it from a copy, "
      "or delete it and rerun the run's original train.py command, which saves it again."
    ) from None
  for key, value in ADDED_FIELDS.items():  # what an older run ran with
    *parents, leaf = key.split(".")
    node = saved
    for part in parents:
      node = node.setdefault(part, {})
    node.setdefault(leaf, value)
  return ml_collections.ConfigDict(saved)
