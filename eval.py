r"""Evaluates a run's checkpoint on its validation split.

  python eval.py --workdir=runs/tiny              # latest checkpoint
  python eval.py --workdir=runs/tiny --step=400   # a named one
"""

import json

from absl import app, flags, logging

flags.DEFINE_string("workdir", None, "A train.py run directory.")
flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
flags.DEFINE_integer("num_eval_steps", None, "Batches to evaluate; default the run's "
                     "config.num_eval_steps (-1: the whole split).")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from linformer.training.loop import evaluate, restore_run

  config, trainer, state = restore_run(FLAGS.workdir, FLAGS.step)
  num = config.num_eval_steps if FLAGS.num_eval_steps is None else FLAGS.num_eval_steps
  metrics = evaluate(trainer, state, num)
  print(json.dumps({"workdir": FLAGS.workdir, "step": int(state.step), **metrics}, indent=2))


if __name__ == "__main__":
  app.run(main)
