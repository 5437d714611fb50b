r"""A bag-of-words baseline for Table 2: TF-IDF of word uni- and bigrams, logistic regression.

  python -m linformer.analysis.bow_baseline --dataset=sst2 \
      --train=../shared/data/sst2/train.tsv --eval=../shared/data/sst2/dev.tsv
  python -m linformer.analysis.bow_baseline --dataset=imdb --strip_markup \
      --train=../shared/data/imdb/train.jsonl.gz --eval=../shared/data/imdb/test.jsonl.gz

The files are read as fine-tuning reads them (`linformer.data.files`: TSV, CSV, JSON lines, the
dataset's text and label columns), so the baseline sees the same examples as the models beside
it. The regularisation C is chosen by 5-fold cross-validation on the train file only; the eval
file is scored once. Prints one JSON line: accuracy, examples, C.
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegressionCV
from sklearn.pipeline import make_pipeline

from linformer.data import classification, files
from linformer.data.datasets import get_dataset_spec
from linformer.data.pipeline import strip_markup

FLAGS = flags.FLAGS  # defined under __main__: importing this module defines no flags


def read(dataset: str, path: str, strip: bool) -> tuple[list[str], np.ndarray]:
  """Texts (pairs joined by a space) and class ids of a file, as fine-tuning reads them."""
  spec = get_dataset_spec(dataset)
  table = files.read_table(path, path)
  source = files.FileSource(
    table, spec.text_fields, spec.label_field, classification.label_map(spec), path
  )
  records = [source[i] for i in range(len(source))]
  texts = [" ".join(r[f] for f in spec.text_fields) for r in records]
  if strip:
    texts = [strip_markup(t) for t in texts]
  return texts, np.array([r[spec.label_field] for r in records])


def fit_and_score(train, evaluation, seed: int = 0) -> dict:
  """Accuracy on `evaluation` of TF-IDF (1-2 grams, sublinear tf) + logistic regression, C by
  5-fold cross-validation on `train`."""
  model = make_pipeline(
    TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
    LogisticRegressionCV(
      Cs=[0.5, 1, 2, 4, 8, 16],
      cv=5,
      scoring="accuracy",
      l1_ratios=(0.0,),  # plain L2, said explicitly (scikit-learn's defaults are changing)
      max_iter=2000,
      random_state=seed,
      use_legacy_attributes=True,  # C_ as an array, as scikit-learn 1.9 (pinned) documents
    ),
  )
  model.fit(*train)
  accuracy = float(np.mean(model.predict(evaluation[0]) == evaluation[1]))
  return {
    "accuracy": accuracy,
    "train_examples": len(train[1]),
    "eval_examples": len(evaluation[1]),
    "C": float(model[-1].C_[0]),
  }


def main(argv):
  del argv
  train = read(FLAGS.dataset, FLAGS.train, FLAGS.strip_markup)
  evaluation = read(FLAGS.dataset, FLAGS.eval, FLAGS.strip_markup)
  print(json.dumps({"dataset": FLAGS.dataset, **fit_and_score(train, evaluation)}))


if __name__ == "__main__":
  flags.DEFINE_string("dataset", "sst2", "A dataset spec (its text and label columns).")
  flags.DEFINE_string("train", None, "Train file (TSV, CSV, JSON lines, optionally .gz).")
  flags.DEFINE_string("eval", None, "File to score.")
  flags.DEFINE_bool("strip_markup", False, "Markup tags become spaces (IMDB's <br />).")
  flags.mark_flags_as_required(["train", "eval"])
  app.run(main)
