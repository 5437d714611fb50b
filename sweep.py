r"""Runs a config file's sweep: every variant one after another, each in its own workdir.

  python sweep.py --config=configs/pretrain.py:sweep=fig3a,size=tiny,steps=300 --workdir=runs/fig3a
  python sweep.py --config=configs/pretrain.py:sweep=fig3a,size=base --workdir=runs/fig3a --dry_run

A config file's `sweep(add, arg)` calls `add(**overrides)` once per variant (big_vision style).
Keys the config string knows (n, k, sharing, ...) are put into the config string; dotted keys
(`optimizer.lr`) become `--config.optimizer.lr=...` flags. `--dry_run` prints one `train.py`
command line per variant, for a cluster scheduler; otherwise each variant runs as its own
process (a fresh JAX each time), skipping variants whose workdir already finished.
"""

import importlib.util
import os
import shlex
import subprocess
import sys

from absl import app, flags

flags.DEFINE_string("config", None, "configs/FILE.py:ARGS with a sweep= key the file knows.")
flags.DEFINE_string("workdir", None, "Parent directory: one sub-directory per variant.")
flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
flags.DEFINE_list("extra", [], "Extra flags for every variant, e.g. --extra=--config.seed=1.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def load_module(path: str):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def variant_name(overrides: dict) -> str:
  return ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items()) or "base"


def variants(config_arg: str) -> list[tuple[str, str, list[str]]]:
  """(name, config string, extra flags) of every variant of the sweep."""
  path, _, arg = config_arg.partition(":")
  module = load_module(path)
  if not hasattr(module, "sweep"):
    raise app.UsageError(f"{path} defines no sweep(add, arg).")
  known = set(getattr(module, "KNOWN_ARGS", ()))
  base = dict(kv.split("=", 1) for kv in arg.split(",") if kv)
  out = []

  def add(**overrides):
    in_string = {k: v for k, v in overrides.items() if k in known}
    flag_keys = {k: v for k, v in overrides.items() if k not in known}
    merged = {
      **base,
      **{
        k: "/".join(map(str, v)) if isinstance(v, (list, tuple)) else v
        for k, v in in_string.items()
      },
    }
    merged.pop("sweep", None)
    cfg = f"{path}:" + ",".join(f"{k}={v}" for k, v in merged.items())
    out.append((variant_name(overrides), cfg, [f"--config.{k}={v}" for k, v in flag_keys.items()]))

  module.sweep(add, arg)
  return out


def main(argv):
  del argv
  todo = variants(FLAGS.config)
  for name, cfg, extra in todo:
    workdir = os.path.join(FLAGS.workdir, name)
    cmd = [
      sys.executable,
      "train.py",
      f"--config={cfg}",
      f"--workdir={workdir}",
      *extra,
      *FLAGS.extra,
    ]
    if FLAGS.dry_run:
      print(shlex.join(["python", *cmd[1:]]))
      continue
    print(f"== {name} ({len(todo)} variants) ==", flush=True)
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
  app.run(main)
