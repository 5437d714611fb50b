r"""Evaluates a run's checkpoint, or predicts with it.

  python eval.py --workdir=runs/tiny                   # latest checkpoint, every eval split
  python eval.py --workdir=runs/tiny --step=400        # a named checkpoint
  python eval.py --workdir=runs/sst2 --best --split=validation
  python eval.py --workdir=runs/sst2 --text "a gripping film"
  python eval.py --workdir=runs/mnli --text "A man sleeps." --text_pair "A person rests."
  python eval.py --workdir=runs/tiny --fill_mask "The <mask> module encodes JSON."

Prediction uses the best checkpoint of a fine-tuning run when it has one.
"""

import json
import os

from absl import app, flags, logging

flags.DEFINE_string("workdir", None, "A train.py run directory.")
flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
flags.DEFINE_bool("best", False, "Use the checkpoint with the best main metric (fine-tuning).")
flags.DEFINE_list("split", None, "Eval split(s); default all of the run's.")
flags.DEFINE_integer(
  "num_eval_steps",
  None,
  "Batches per split; default the run's config.num_eval_steps (-1: the whole split).",
)
flags.DEFINE_string("text", None, "Predict the label of this text (fine-tuning runs).")
flags.DEFINE_string("text_pair", None, "Second text, for pair datasets (MNLI, QQP, ...).")
flags.DEFINE_string(
  "fill_mask",
  None,
  "Print the top 5 tokens at each <mask> (or the "
  "tokenizer's own mask token, e.g. [MASK]) of this text (MLM runs).",
)
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from linformer.training.loop import evaluate, restore_run

  if FLAGS.fill_mask is not None:
    _, trainer, state = restore_run(FLAGS.workdir, FLAGS.step)
    if not hasattr(trainer.task, "fill_mask"):
      raise app.UsageError(
        f"--fill_mask: {FLAGS.workdir} is a {trainer.task.name} run; "
        "filling masks needs a masked-LM run."
      )
    try:
      result = trainer.task.fill_mask(trainer.model(state), FLAGS.fill_mask)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    for mask in result["masks"]:
      print(
        f"position {mask['position']}: "
        + "  ".join(f"{c['token']} {c['probability']:.3f}" for c in mask["candidates"])
      )
    return
  if FLAGS.text is not None:
    best = FLAGS.best or (FLAGS.step is None and os.path.isdir(os.path.join(FLAGS.workdir, "best")))
    _, trainer, state = restore_run(FLAGS.workdir, FLAGS.step, best=best)
    if not hasattr(trainer.task, "predict"):
      raise app.UsageError(
        f"--text: {FLAGS.workdir} is a {trainer.task.name} run; prediction needs a fine-tuning run."
      )
    print(
      json.dumps(trainer.task.predict(trainer.model(state), FLAGS.text, FLAGS.text_pair), indent=2)
    )
    return
  config, trainer, state = restore_run(FLAGS.workdir, FLAGS.step, best=FLAGS.best)
  num = config.num_eval_steps if FLAGS.num_eval_steps is None else FLAGS.num_eval_steps
  metrics = evaluate(trainer, state, num, FLAGS.split)
  print(json.dumps({"workdir": FLAGS.workdir, "step": int(state.step), **metrics}, indent=2))


if __name__ == "__main__":
  app.run(main)
