"""What the command-line tools (train.py, eval.py, export.py) share:
flag parsing and the handling of errors.

An expected error (a bad flag or config value, a missing file, a dataset that is not prepared:
`ConfigError`, `UsageError`, absl flag errors, `FileNotFoundError` and its kin) prints one line,
`{prog}: error: {what is wrong, naming the field or file, and the fix}`, on stderr and exits with
status 2; `--traceback` or the environment variable LINFORMER_TRACEBACK=1 prints the full trace
first. Any other exception is a bug and keeps its traceback (status 1).

    def define_flags(fv, argv): flags.DEFINE_string("workdir", None, "...", flag_values=fv)
    def main(fv) -> int | None: ...
    if __name__ == "__main__":
      sys.exit(cli.run("train.py", define_flags, main, doc=__doc__))

`run(..., argv=[...])` runs in-process and returns the exit status (tests). Each call parses into
its own `FlagValues`, so several tools' flags never clash. Flags a tool does not define (absl's
own, e.g. --verbosity, and grain's) go to absl's global FLAGS.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import app, flags

from linformer.axes import MESH_AXES
from linformer.config import ConfigError

EXIT_USAGE = 2
TRACEBACK_ENV = "LINFORMER_TRACEBACK"
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")


class UsageError(ConfigError):
  """A bad command-line flag, or flags that do not go together."""


EXPECTED = (
  ConfigError,
  app.UsageError,
  flags.Error,
  FileNotFoundError,
  NotADirectoryError,
  IsADirectoryError,
  PermissionError,
  FileExistsError,
)


def run(
  prog: str,
  define_flags: Callable[[flags.FlagValues, list[str]], None],
  main: Callable[[flags.FlagValues], int | None],
  argv: Sequence[str] | None = None,
  doc: str = "",
) -> int:
  """Parses `argv` (default sys.argv) into fresh flags, runs `main`, returns the exit status."""
  standalone = argv is None
  argv = list(sys.argv if argv is None else argv)
  trace = _traceback_asked(argv)
  fv = flags.FlagValues()
  define_flags(fv, argv)
  flags.DEFINE_bool(
    "traceback",
    False,
    f"Print the full traceback of an expected error (also: {TRACEBACK_ENV}=1).",
    flag_values=fv,
  )
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    print((doc.strip() + "\n\n" if doc else "") + fv.get_help(include_special_flags=False))
    return 0
  try:
    _parse(fv, argv)
  except (flags.Error, OSError, ValueError, TypeError, AttributeError, KeyError) as e:
    return report(prog, _flag_message(e, fv, argv), trace)
  if standalone:
    from absl import logging

    logging.use_absl_handler()
  try:
    return main(fv) or 0
  except EXPECTED as e:
    return report(prog, str(e), trace or fv["traceback"].value)


def report(prog: str, message: str, trace: bool = False) -> int:
  """Prints an expected error (the exception being handled) in one line; returns 2."""
  if trace:
    traceback.print_exc()
  line = " ".join(str(message).split()) or "unknown error"
  print(f"{prog}: error: {line}", file=sys.stderr)
  return EXIT_USAGE


# What makes a directory a train.py run: its config.json beside any of these.
_RUN_MARKS = ("checkpoints", "metrics.jsonl", "tokenizer", "results.json")


def run_directory(path: str) -> str | None:
  """The train.py run directory that `path` is or lies in (resolved), or None."""
  here = os.path.realpath(path)
  while True:
    if os.path.isfile(os.path.join(here, "config.json")) and any(
      os.path.exists(os.path.join(here, mark)) for mark in _RUN_MARKS
    ):
      return here
    parent = os.path.dirname(here)
    if parent == here:
      return None
    here = parent


def check_output(flag: str, value: str, inputs: dict[str, Sequence[str]] | None = None) -> None:
  """A UsageError if writing `value` (a file or a directory of outputs) could destroy what the
  user has: a path given as an input of the same command (`inputs`: flag -> its paths, globs
  already expanded), a directory holding one, or an existing file or directory of a train.py
  run (a new file or directory inside a run is fine). Paths are compared resolved (symlinks)."""
  out = os.path.realpath(value)
  for name, paths in (inputs or {}).items():
    for path in paths:
      given = os.path.realpath(path)
      if given == out or given.startswith(out + os.sep):
        what = "is" if given == out else "holds"
        raise UsageError(
          f"{flag}={value} {what} the input {name}={path}: writing it would destroy the input. "
          "Fix: write to a new path."
        )
  run = run_directory(out)
  if run is not None and os.path.exists(out):
    where = "is the run directory" if run == out else f"belongs to the run in {run}"
    raise UsageError(
      f"{flag}={value} {where}: writing there would overwrite that run's files. Fix: write to a "
      "new path (a new file or folder inside a run is fine)."
    )


def check_output_absl(flag: str, value: str, inputs: dict[str, Sequence[str]] | None = None):
  """`check_output` for the tools run by absl's `app.run` (the analyses): its usage error."""
  try:
    check_output(flag, value, inputs)
  except UsageError as e:
    raise app.UsageError(str(e)) from None


def parse_mesh(text: str) -> dict[str, int]:
  """`--mesh=data=1,fsdp=1,tensor=1` as {axis: size}; omitted axes are 1."""
  sizes = {}
  for item in text.split(","):
    axis, sep, size = item.partition("=")
    axis = axis.strip()
    if not sep or axis not in MESH_AXES or not re.fullmatch(r"-?\d+", size.strip()):
      raise UsageError(
        f"--mesh={text}: expected axis=size pairs over {MESH_AXES}, e.g. "
        "--mesh=data=1,fsdp=1,tensor=1 (one size may be -1: the remaining devices)."
      )
    sizes[axis] = int(size)
  return {axis: sizes.get(axis, 1) for axis in MESH_AXES}


def _traceback_asked(argv: Sequence[str]) -> bool:
  if os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no"):
    return True
  return any(a in ("--traceback", "-traceback", "--traceback=true", "--traceback=1") for a in argv)


def _parse(fv: flags.FlagValues, argv: list[str]) -> None:
  rest = fv(argv, known_only=True)[1:]
  positional = [a for a in rest if not a.startswith("-")]
  if positional:
    raise UsageError(f"unexpected argument {positional[0]!r}: every input is a --flag=value.")
  if "config" in fv and fv["config"].value is not None:
    fv["config"].value.keys  # noqa: B018  (a config file that failed to load raises OSError)
  if rest:  # absl's own flags (--verbosity, ...) and libraries' (grain); unknown ones raise
    flags.FLAGS([argv[0], *rest])
  elif not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _flag_message(e: Exception, fv: flags.FlagValues, argv: list[str]) -> str:
  """One line for an error raised while parsing the command line."""
  if isinstance(e, UsageError):
    return str(e)
  if isinstance(e, (AttributeError, KeyError)):  # config_flags: an override of no field
    config = _config_alone(argv) if "config" in fv else None
    for arg in argv[1:]:
      name = re.match(r"--(?:no)?(config\.[^=]+)", arg)
      if name and config is not None and not _has_field(config, name.group(1)):
        return _unknown_field(name.group(1), config)
    raise e
  text = str(e)
  if isinstance(e, flags.UnrecognizedFlagError):
    name = getattr(e, "flagname", None) or text
    if name.startswith("config.") and "config" in fv:
      return _unknown_field(name, fv["config"].value)
    return f"--{name}: unknown flag. Fix: see --help for the flags."
  if "must have a value other than None" in text:
    name = re.search(r"--(\w+)", text)
    return f"--{name.group(1) if name else '?'} is required (see --help)."
  if "Error whilst parsing config file" in text:  # config_flags: the config file's traceback
    flag = text.split(": Error whilst parsing", 1)[0].replace("flag ", "")
    last = [line for line in text.splitlines() if line.strip()][-1]
    return f"{flag}: {re.sub(r'^[A-Za-z_.]*Error: ', '', last.strip())}"
  if "Failed loading config file" in text:  # config_flags: no such file
    path = re.search(r"Attempted \[[^\]]*\]:\s*(\S+)", text)
    return f"--config={path.group(1) if path else '?'}: no such config file."
  return text


def _config_alone(argv: list[str]):
  """The --config of `argv` loaded without its overrides (None if that fails too)."""
  from ml_collections import config_flags

  given = [a for a in argv[1:] if re.match(r"--config=", a)]
  if not given:
    return None
  alone = [argv[0], given[-1]]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=alone)
  try:
    fv(alone)
    return fv.config
  except Exception:  # noqa: BLE001  (the original error is reported instead)
    return None


def _has_field(config, name: str) -> bool:
  node = config
  for part in name.split(".")[1:]:
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def _unknown_field(name: str, config) -> str:
  """`--config.model.foo`: the field is not in the config; list the known ones where it was."""
  *parents, field = name.split(".")[1:]
  node, where = config, "config"
  try:
    for part in parents:
      if part not in node:
        field = part
        break
      node, where = node[part], f"{where}.{part}"
    known = ", ".join(sorted(node.keys()))
  except (AttributeError, TypeError):  # the config failed to load, or is not a ConfigDict
    return f"--{name}: the config has no such field."
  return f"--{name}: {where} has no field {field!r}. Known fields of {where}: {known}."
