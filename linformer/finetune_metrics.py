"""Fine-tuning metrics, as GLUE defines them, computed with sklearn and scipy.

Every metric is a function `(predictions, labels) -> float` of numpy arrays:
class ids for classification (`predictions_from_logits` takes the argmax),
real scores for regression (STS-B). The metric names used by dataset specs
(`linformer.data.datasets.DatasetSpec.metrics`) are the keys of `METRICS`:

  accuracy: fraction of exact matches (SST-2, QNLI, RTE, WNLI, IMDB, ListOps;
    MNLI on each of its two eval splits, reported as matched/accuracy and
    mismatched/accuracy).
  f1: F1 of the positive class 1 (binary), 0 when nothing is predicted or
    labelled positive (QQP, MRPC, reported with accuracy).
  accuracy_and_f1: their mean, GLUE's single score for QQP and MRPC.
  matthews_corrcoef: Matthews correlation in [-1, 1], 0 for constant
    predictions (CoLA).
  pearson, spearman: correlation of the predicted and gold similarity
    scores (STS-B); NaN when either side is constant.
  pearson_and_spearman: their mean, GLUE's single score for STS-B.

Eval batches are padded with zero-weight rows; `compute_metrics` drops the
rows whose weight is 0 before computing anything, and `split_metrics` names
each result `{split}/{metric}` (e.g. 'matched/accuracy').
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import scipy.stats
import sklearn.metrics

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def _flat(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if predictions.shape != labels.shape:
    raise ValueError(
      f"predictions {predictions.shape} and labels {labels.shape} must have the same shape."
    )
  return predictions.reshape(-1), labels.reshape(-1)


def accuracy(predictions, labels) -> float:
  predictions, labels = _flat(predictions, labels)
  return float(sklearn.metrics.accuracy_score(labels, predictions))


def f1(predictions, labels) -> float:
  """Binary F1 of class 1 (GLUE's QQP and MRPC)."""
  predictions, labels = _flat(predictions, labels)
  return float(
    sklearn.metrics.f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0)
  )


def accuracy_and_f1(predictions, labels) -> float:
  return (accuracy(predictions, labels) + f1(predictions, labels)) / 2


def matthews_corrcoef(predictions, labels) -> float:
  """Matthews correlation (GLUE's CoLA)."""
  predictions, labels = _flat(predictions, labels)
  return float(sklearn.metrics.matthews_corrcoef(labels, predictions))


def _constant(x: np.ndarray) -> bool:
  return x.size < 2 or bool(np.all(x == x[0]))


def pearson(predictions, labels) -> float:
  """Pearson correlation (GLUE's STS-B); NaN if either side is constant."""
  predictions, labels = _flat(predictions, labels)
  if _constant(predictions) or _constant(labels):
    return float("nan")
  return float(scipy.stats.pearsonr(predictions.astype(np.float64), labels.astype(np.float64))[0])


def spearman(predictions, labels) -> float:
  """Spearman rank correlation (GLUE's STS-B); NaN if a side is constant."""
  predictions, labels = _flat(predictions, labels)
  if _constant(predictions) or _constant(labels):
    return float("nan")
  return float(scipy.stats.spearmanr(predictions, labels)[0])


def pearson_and_spearman(predictions, labels) -> float:
  return (pearson(predictions, labels) + spearman(predictions, labels)) / 2


METRICS: dict[str, MetricFn] = {
  "accuracy": accuracy,
  "f1": f1,
  "accuracy_and_f1": accuracy_and_f1,
  "matthews_corrcoef": matthews_corrcoef,
  "pearson": pearson,
  "spearman": spearman,
  "pearson_and_spearman": pearson_and_spearman,
}


def predictions_from_logits(logits, num_labels: int) -> np.ndarray:
  """Class ids (argmax over the last axis), or the scores if regression.

  Args:
    logits: [..., num_labels] model outputs.
    num_labels: 1 means regression: the prediction is logits[..., 0].
  """
  logits = np.asarray(logits)
  if num_labels == 1:
    return logits.reshape(logits.shape[:-1]) if (logits.ndim and logits.shape[-1] == 1) else logits
  return np.argmax(logits, axis=-1).astype(np.int32)


def compute_metrics(names: Iterable[str], predictions, labels, weights=None) -> dict[str, float]:
  """`{name: METRICS[name](predictions, labels)}` over the rows of weight > 0.

  Args:
    names: metric names, keys of `METRICS`.
    predictions: [N] class ids or regression scores.
    labels: [N] gold class ids or scores.
    weights: optional [N]; rows of weight 0 (eval padding) are dropped.
  """
  predictions, labels = _flat(predictions, labels)
  if weights is not None:
    keep = np.asarray(weights).reshape(-1) > 0
    if keep.shape != labels.shape:
      raise ValueError(f"weights {np.shape(weights)} do not match labels {labels.shape}.")
    predictions, labels = predictions[keep], labels[keep]
  out = {}
  for name in names:
    if name not in METRICS:
      raise ValueError(f"Unknown metric {name!r}; known: {', '.join(sorted(METRICS))}.")
    out[name] = METRICS[name](predictions, labels)
  return out


def split_metrics(names: Iterable[str], outputs: Mapping[str, tuple]) -> dict[str, float]:
  """Metrics of several eval splits, keyed `{split}/{metric}`.

  Args:
    names: metric names, keys of `METRICS`.
    outputs: split name -> (predictions, labels) or (predictions, labels,
      weights), e.g. {'matched': (...), 'mismatched': (...)} for MNLI.
  """
  names = list(names)
  out = {}
  for split, arrays in outputs.items():
    for name, value in compute_metrics(names, *arrays).items():
      out[f"{split}/{name}"] = value
  return out


def mnli_accuracy(matched: tuple, mismatched: tuple) -> dict[str, float]:
  """MNLI's two scores: {'matched/accuracy', 'mismatched/accuracy'}.

  Each argument is (predictions, labels) or (predictions, labels, weights)
  of the validation_matched / validation_mismatched split.
  """
  return split_metrics(["accuracy"], {"matched": matched, "mismatched": mismatched})
