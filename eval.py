r"""Evaluates a run's checkpoint, or predicts with it.

  python eval.py --workdir=runs/tiny                   # latest checkpoint, every eval split
  python eval.py --workdir=runs/tiny --step=400        # a named checkpoint
  python eval.py --workdir=runs/sst2 --best --split=validation
  python eval.py --workdir=runs/sst2 --text "a gripping film"
  python eval.py --workdir=runs/mnli --text "A man sleeps." --text_pair "A person rests."
  python eval.py --workdir=runs/sst2 --predict_file=test.tsv --out=predictions.jsonl
  python eval.py --workdir=runs/tiny --fill_mask "The <mask> module encodes JSON."
  python eval.py --workdir=runs/clm --generate "The json module" --max_new_tokens=20
  python eval.py --workdir=runs/base --mesh=data=1,fsdp=1,tensor=1   # on fewer devices

Prediction uses the best checkpoint of a fine-tuning run when it has one. --predict_file reads a
TSV, CSV or JSON-lines file (or glob, optionally gzipped) with the run's text columns, writes one
JSON line per example to --out (index, label id and name, probabilities; the score for a
regression) and, when the file has the label column, prints the dataset's metrics on it.

The checkpoint is restored onto the run's mesh if this machine has its devices, else onto every
device here on the data axis (a run trained on 8 devices evaluates on 1), or onto --mesh.

A bad flag, a workdir that holds no run, a split the task lacks, a step without a checkpoint or
a --predict_file that cannot be read (checked whole before anything is restored or written)
prints one line and exits with status 2 (--traceback: the full trace).
"""

import json
import os
import sys

import numpy as np
from absl import flags, logging

from linformer import cli

STOPS = {
  "eos": "at </s>",
  "max_new_tokens": "after --max_new_tokens",
  "max_len": "at config.model.max_len (every position used)",
}


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  del argv
  define = dict(flag_values=fv)
  flags.DEFINE_string("workdir", None, "A train.py run directory.", **define)
  flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.", **define)
  flags.DEFINE_bool(
    "best", False, "Use the checkpoint with the best main metric (fine-tuning).", **define
  )
  flags.DEFINE_list("split", None, "Eval split(s); default all of the run's.", **define)
  flags.DEFINE_integer(
    "num_eval_steps",
    None,
    "Batches per split; default the run's config.num_eval_steps (-1: the whole split).",
    **define,
  )
  flags.DEFINE_string("text", None, "Predict the label of this text (fine-tuning runs).", **define)
  flags.DEFINE_string(
    "text_pair", None, "Second text, for pair datasets (MNLI, QQP, ...).", **define
  )
  flags.DEFINE_string(
    "predict_file",
    None,
    "Predict every example of this TSV / CSV / JSON-lines file or glob (fine-tuning runs); "
    "needs --out.",
    **define,
  )
  flags.DEFINE_string("out", None, "--predict_file: the JSON-lines file to write.", **define)
  flags.DEFINE_string(
    "fill_mask",
    None,
    "Print the top 5 tokens at each <mask> (or the "
    "tokenizer's own mask token, e.g. [MASK]) of this text (MLM runs).",
    **define,
  )
  flags.DEFINE_string(
    "generate",
    None,
    "Continue this text with a causal-LM run (configs/clm.py) and print the continuation.",
    **define,
  )
  flags.DEFINE_integer(
    "max_new_tokens", 50, "--generate: the most tokens to add (it also stops at eos).", **define
  )
  flags.DEFINE_float(
    "temperature", 0.0, "--generate: 0 takes the most likely token; > 0 samples.", **define
  )
  flags.DEFINE_integer(
    "top_k", 0, "--generate: sample from the k most likely tokens only (0: all).", **define
  )
  flags.DEFINE_integer("seed", 0, "--generate: the sampling seed.", **define)
  flags.DEFINE_string(
    "mesh",
    None,
    "Devices to restore onto, e.g. data=1,fsdp=1,tensor=1 (one size may be -1); default the "
    "run's mesh if it fits this machine, else all devices on the data axis.",
    **define,
  )
  flags.mark_flags_as_required(["workdir"], flag_values=fv)


def check_flags(fv: flags.FlagValues, config) -> None:
  """The flags against each other and against the run, before anything is restored."""
  task, workdir = config.get("task"), fv.workdir
  _check_generate_flags(fv, task, workdir)
  _check_predict_file_flags(fv, task, workdir)
  if fv.fill_mask is not None and fv.text is not None:
    raise cli.UsageError("--fill_mask and --text: give one of them.")
  if fv.text_pair is not None and fv.text is None:
    raise cli.UsageError("--text_pair needs --text (the first text of the pair).")
  if (fv.fill_mask is not None or fv.text is not None) and (
    fv.split or fv.num_eval_steps is not None
  ):
    raise cli.UsageError("--split and --num_eval_steps apply to evaluation, not prediction.")
  if fv.fill_mask is not None and task != "mlm":
    raise cli.UsageError(
      f"--fill_mask: {workdir} is a {task} run; filling masks needs a masked-LM run."
    )
  if fv.text is not None:
    if task != "finetune":
      raise cli.UsageError(
        f"--text: {workdir} is a {task} run; prediction needs a fine-tuning run."
      )
    from linformer.data.datasets import spec_from_config

    spec = spec_from_config(config.data)
    if spec.is_pair and fv.text_pair is None:
      raise cli.UsageError(
        f"--text: {spec.name} classifies text pairs ({' + '.join(spec.text_fields)}); give "
        "--text_pair too."
      )
    if not spec.is_pair and fv.text_pair is not None:
      raise cli.UsageError(f"--text_pair: {spec.name} classifies single texts; leave it out.")
  if fv.split:
    from linformer.training.validation import eval_split_names

    known = eval_split_names(config)
    unknown = [s for s in fv.split if s not in known]
    if unknown:
      raise cli.UsageError(
        f"--split={','.join(fv.split)}: {workdir} ({task}, {config.data.get('dataset')}) has no "
        f"split {unknown[0]!r}; its splits are {', '.join(known)}."
      )
  if fv.num_eval_steps is not None and fv.num_eval_steps != -1 and fv.num_eval_steps < 1:
    raise cli.UsageError(
      f"--num_eval_steps={fv.num_eval_steps}: give a number of batches >= 1, or -1 for all."
    )
  if fv.step is not None and fv.step < 0:
    raise cli.UsageError(f"--step={fv.step}: give a checkpoint step >= 0.")


def _check_predict_file_flags(fv: flags.FlagValues, task: str, workdir: str) -> None:
  if fv.predict_file is None:
    if fv.out is not None:
      raise cli.UsageError("--out applies to --predict_file; give the file to predict too.")
    return
  _check_mode(
    fv, "predict_file", ("text", "fill_mask", "generate"), "prediction", task, workdir,
    "finetune", "prediction needs a fine-tuning run",
  )  # fmt: skip
  if not fv.out:
    raise cli.UsageError(
      "--predict_file needs --out, the JSON-lines file to write, e.g. --out=predictions.jsonl."
    )
  out = os.path.abspath(fv.out)
  if os.path.isdir(out):
    raise cli.UsageError(f"--out={fv.out} is a directory. Fix: name a file in it.")
  if not os.path.isdir(os.path.dirname(out)):
    raise cli.UsageError(
      f"--out={fv.out}: the directory {os.path.dirname(out)} does not exist. Fix: create it."
    )
  if not os.access(os.path.dirname(out), os.W_OK):
    raise cli.UsageError(f"--out={fv.out}: {os.path.dirname(out)} is not writable.")
  from linformer.data import files

  inputs = {
    "--predict_file": files.expand(fv.predict_file, "--predict_file"),
    "--workdir": [workdir],
  }
  cli.check_output("--out", fv.out, inputs)


def _check_generate_flags(fv: flags.FlagValues, task: str, workdir: str) -> None:
  sampling = ("max_new_tokens", "temperature", "top_k", "seed")
  if fv.generate is None:
    given = [name for name in sampling if fv[name].present]
    if given:
      raise cli.UsageError(f"--{given[0]} applies to --generate; give the text to continue too.")
    return
  if fv.max_new_tokens < 1:
    raise cli.UsageError(f"--max_new_tokens={fv.max_new_tokens}: give a number of tokens >= 1.")
  if fv.temperature < 0:
    raise cli.UsageError(f"--temperature={fv.temperature}: give 0 (greedy) or a value > 0.")
  if fv.top_k < 0:
    raise cli.UsageError(f"--top_k={fv.top_k}: give 0 (no cut) or a number of tokens >= 1.")
  _check_mode(
    fv, "generate", ("fill_mask", "text"), "generation", task, workdir, "clm",
    "generating text needs a causal-LM run (configs/clm.py)",
  )  # fmt: skip


def _check_mode(fv, flag, others, what, task, workdir, needs, why) -> None:
  """--flag excludes the `others` flags and the evaluation flags, and needs a `needs` run."""
  for other in others:
    if fv[other].value is not None:
      raise cli.UsageError(f"--{flag} and --{other}: give one of them.")
  if fv.split or fv.num_eval_steps is not None:
    raise cli.UsageError(f"--split and --num_eval_steps apply to evaluation, not {what}.")
  if task != needs:
    raise cli.UsageError(f"--{flag}: {workdir} is a {task} run; {why}.")


def main(fv: flags.FlagValues) -> int:
  logging.set_verbosity(logging.WARNING)
  from linformer.training import checkpointing

  config = checkpointing.load_config(fv.workdir)  # no run, or a torn config.json: one line
  check_flags(fv, config)
  mesh = cli.parse_mesh(fv.mesh) if fv.mesh else None
  from linformer.training.restore import restore_run
  from linformer.training.trainer import evaluate

  if fv.generate is not None:
    _, trainer, state = restore_run(fv.workdir, fv.step, config, best=fv.best, mesh=mesh)
    try:
      result = trainer.task.generate(
        trainer.model(state),
        fv.generate,
        fv.max_new_tokens,
        temperature=fv.temperature,
        top_k=fv.top_k,
        seed=fv.seed,
      )
    except ValueError as e:
      raise cli.UsageError(str(e)) from None
    print(f"prompt: {result['prompt']}")
    print(f"continuation: {result['continuation']}")
    print(f"stopped: {STOPS[result['stop']]} ({len(result['token_ids'])} new tokens)")
    return 0
  if fv.fill_mask is not None:
    _, trainer, state = restore_run(fv.workdir, fv.step, config, best=fv.best, mesh=mesh)
    try:
      result = trainer.task.fill_mask(trainer.model(state), fv.fill_mask)
    except ValueError as e:
      raise cli.UsageError(str(e)) from None
    for mask in result["masks"]:
      print(
        f"position {mask['position']}: "
        + "  ".join(f"{c['token']} {c['probability']:.3f}" for c in mask["candidates"])
      )
    return 0
  if fv.predict_file is not None:
    return _predict_file(fv, config, mesh)
  if fv.text is not None:
    best = fv.best or (fv.step is None and os.path.isdir(os.path.join(fv.workdir, "best")))
    _, trainer, state = restore_run(fv.workdir, fv.step, config, best=best, mesh=mesh)
    try:
      prediction = trainer.task.predict(trainer.model(state), fv.text, fv.text_pair)
    except ValueError as e:
      raise cli.UsageError(str(e)) from None
    print(json.dumps(prediction, indent=2))
    return 0
  config, trainer, state = restore_run(fv.workdir, fv.step, config, best=fv.best, mesh=mesh)
  num = config.num_eval_steps if fv.num_eval_steps is None else fv.num_eval_steps
  metrics = evaluate(trainer, state, num, fv.split)
  print(json.dumps({"workdir": fv.workdir, "step": int(state.step), **metrics}, indent=2))
  return 0


def _predict_file(fv: flags.FlagValues, config, mesh) -> int:
  """Predictions for every example of --predict_file, written to --out; metrics if labelled."""
  import jax

  from linformer.tasks import get_task
  from linformer.training.restore import restore_run
  from linformer.training.trainer import eval_outputs

  task = get_task(config)  # read and check the whole file before restoring anything
  source = task.read_predict_file(fv.predict_file)
  best = fv.best or (fv.step is None and os.path.isdir(os.path.join(fv.workdir, "best")))
  _, trainer, state = restore_run(fv.workdir, fv.step, config, best=best, mesh=mesh)
  batches, num_batches = trainer.task.predict_batches(source)
  outputs = eval_outputs(trainer, state, batches, total=num_batches, desc="predict")
  logits = np.concatenate([o["logits"] for o in outputs])[: len(source)]
  if jax.process_index() == 0:
    tmp = fv.out + ".tmp"
    with open(tmp, "w") as f:
      for index, record in enumerate(trainer.task.predictions(logits)):
        f.write(json.dumps({"index": index, **record}) + "\n")
    os.replace(tmp, fv.out)
    print(f"Wrote {len(source)} predictions of {fv.predict_file} to {fv.out}.")
  if source.has_labels:
    metrics = trainer.task.metrics_of(outputs)
    print(
      json.dumps({"predict_file": fv.predict_file, "examples": len(source), **metrics}, indent=2)
    )
  return 0


def run(argv: list[str] | None = None) -> int:
  """eval.py with `argv` (default sys.argv); returns the exit status (2: a bad input)."""
  return cli.run("eval.py", define_flags, main, argv, doc=__doc__)


if __name__ == "__main__":
  sys.exit(run())
