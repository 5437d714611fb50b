r"""Exports a run's checkpoint as a HuggingFace BERT / RoBERTa directory, read back bit for bit.

  python export.py --workdir=runs/base --out=exported/base [--step=N]
      [--model_type=auto|bert|roberta]

writes `model.safetensors`, `config.json` and the run's tokenizer (what each holds:
`linformer/convert/export.py`). The directory is a `config.init_from` for fine-tuning, uptraining
or another run, and `transformers` loads it (exactly for a post-LN full-attention model; its
config.json's `linformer.transformers_load` says what a plain load would miss).

A bad flag, a workdir with no run or checkpoint, or an --out that is a file prints one line naming
it and the fix, writes nothing and exits with status 2.
"""

import os
import sys

from absl import flags

from linformer import cli
from linformer.convert import export
from linformer.training import restore


def export_run(
  workdir: str, out: str, *, step: int | None = None, model_type: str = "auto"
) -> dict:
  """Exports a run's checkpoint (the latest unless `step`) to `out`; returns config.json.

  `model_type="auto"`: the architecture of the HF checkpoint the run started from, else BERT for
  a model with segment types and RoBERTa without."""
  config, cfg, params, step = restore.run_params(workdir, step)
  if model_type == "auto":
    hf = export.source_hf_config(config)
    model_type = hf["model_type"] if hf else "bert" if cfg.type_vocab_size >= 2 else "roberta"
  tokenizer_dir = os.path.join(workdir, "tokenizer")
  return export.export_dir(
    out,
    params,
    cfg,
    model_type,
    tokenizer_dir=tokenizer_dir if os.path.isdir(tokenizer_dir) else None,
    source={"workdir": os.path.abspath(workdir), "step": int(step), "task": config.get("task")},
    later_positions=export.source_later_positions(config, cfg),
  )


def define_flags(fv, argv) -> None:
  del argv
  define = dict(flag_values=fv)
  flags.DEFINE_string(
    "workdir", None, "The run's --workdir (its latest checkpoint is exported).", **define
  )
  flags.DEFINE_string("out", None, "Directory to write the HuggingFace files to.", **define)
  flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).", **define)
  flags.DEFINE_enum(
    "model_type",
    "auto",
    ["auto", *export.MODEL_TYPES],
    "HF architecture; auto: that of config.init_from, else bert with token types, roberta without.",
    **define,
  )
  flags.mark_flags_as_required(["workdir", "out"], flag_values=fv)


def main(fv) -> int:
  if os.path.exists(fv.out) and not os.path.isdir(fv.out):
    raise cli.UsageError(f"--out={fv.out} is a file. Fix: give a new or existing directory.")
  if fv.step is not None and fv.step < 0:
    raise cli.UsageError(f"--step={fv.step}: give a checkpoint step >= 0.")
  cli.check_output("--out", fv.out, {"--workdir": [fv.workdir]})
  config = export_run(fv.workdir, fv.out, step=fv.step, model_type=fv.model_type)
  print(f"Wrote {fv.out} ({config['model_type']}, step {config['linformer']['source']['step']}).")
  for note in config["linformer"]["transformers_load"]:
    print("Note:", note)
  return 0


def run(argv: list[str] | None = None) -> int:
  """export.py with `argv` (default sys.argv); returns the exit status (2: a bad input)."""
  return cli.run("export.py", define_flags, main, argv, doc=__doc__)


if __name__ == "__main__":
  sys.exit(run())
