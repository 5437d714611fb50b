"""Tests of linformer.finetune_metrics against values computed by hand."""

import math

import numpy as np
import pytest

from linformer import finetune_metrics as metrics

# A binary example used by several tests:
#   index        0  1  2  3  4
#   predictions  0  1  1  0  1
#   labels       0  1  0  0  0
PREDICTIONS = np.array([0, 1, 1, 0, 1])
LABELS = np.array([0, 1, 0, 0, 0])


def test_accuracy():
  # Correct at indices 0, 1, 3: 3 / 5.
  assert metrics.accuracy(PREDICTIONS, LABELS) == pytest.approx(0.6)
  assert metrics.accuracy([2, 1, 0], [2, 1, 0]) == 1.0


def test_f1_of_the_positive_class():
  # TP = 1 (index 1), FP = 2 (indices 2, 4), FN = 0.
  # F1 = 2 TP / (2 TP + FP + FN) = 2 / 4 = 0.5
  # (precision 1/3, recall 1: 2 * (1/3) / (4/3) = 0.5).
  assert metrics.f1(PREDICTIONS, LABELS) == pytest.approx(0.5)
  # Class 1 is the positive class: swapping the classes changes F1.
  # Then TP = 2 (indices 0, 3 -> now 1), FP = 0, FN = 2 (indices 2, 4):
  # 2 * 2 / (4 + 0 + 2) = 2/3.
  assert metrics.f1(1 - PREDICTIONS, 1 - LABELS) == pytest.approx(2 / 3)
  # Nothing predicted or labelled positive: 0, not a warning/NaN.
  assert metrics.f1([0, 0], [0, 0]) == 0.0


def test_accuracy_and_f1_is_their_mean():
  # QQP/MRPC's GLUE score: (0.6 + 0.5) / 2.
  assert metrics.accuracy_and_f1(PREDICTIONS, LABELS) == pytest.approx(0.55)


def test_matthews_corrcoef():
  # predictions 1 1 0 0 1 0
  # labels      1 0 0 0 1 1
  # TP = 2 (0, 4), FP = 1 (1), TN = 2 (2, 3), FN = 1 (5).
  # MCC = (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))
  #     = (4 - 1) / sqrt(3 * 3 * 3 * 3) = 3 / 9 = 1/3.
  got = metrics.matthews_corrcoef([1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1])
  assert got == pytest.approx(1 / 3)
  assert metrics.matthews_corrcoef([1, 0, 1], [1, 0, 1]) == pytest.approx(1)
  assert metrics.matthews_corrcoef([0, 1, 0], [1, 0, 1]) == pytest.approx(-1)
  # Constant predictions: the denominator is 0; defined as 0.
  assert metrics.matthews_corrcoef([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0


def test_pearson():
  # x = 1 2 3 4 (mean 2.5), y = 2 4 5 9 (mean 5).
  # dx = -1.5 -0.5 0.5 1.5, dy = -3 -1 0 4.
  # sum dx dy = 4.5 + 0.5 + 0 + 6 = 11; sum dx^2 = 5; sum dy^2 = 26.
  # r = 11 / sqrt(5 * 26) = 11 / sqrt(130).
  got = metrics.pearson(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 5.0, 9.0]))
  assert got == pytest.approx(11 / math.sqrt(130))
  assert math.isnan(metrics.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_spearman():
  # Ranks of y = 10 30 20 40 are 1 3 2 4; d = 0 -1 1 0; sum d^2 = 2.
  # rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 12 / 60 = 0.8.
  assert metrics.spearman([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0]) == (pytest.approx(0.8))
  # Ties get mean ranks: y = 1 2 2 3 -> ranks 1 2.5 2.5 4. Pearson of ranks:
  # dx = -1.5 -0.5 0.5 1.5, dy = -1.5 0 0 1.5; sum dx dy = 4.5;
  # sum dx^2 = 5, sum dy^2 = 4.5: rho = 4.5 / sqrt(22.5).
  assert metrics.spearman([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 2.0, 3.0]) == (
    pytest.approx(4.5 / math.sqrt(22.5))
  )
  assert math.isnan(metrics.spearman([2.0, 2.0], [1.0, 3.0]))


def test_pearson_and_spearman_is_their_mean():
  # y = 2 4 5 9 increases with x: Spearman 1; Pearson 11 / sqrt(130).
  got = metrics.pearson_and_spearman([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0])
  assert got == pytest.approx((11 / math.sqrt(130) + 1) / 2)


def test_mnli_matched_and_mismatched_accuracy():
  # matched: 0 1 2 2 vs 0 1 1 2 -> 3 / 4.
  # mismatched: 2 2 0 (+ a padding row of weight 0) vs 0 2 0 -> 2 / 3.
  got = metrics.mnli_accuracy(
    matched=(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])),
    mismatched=(np.array([2, 2, 0, 1]), np.array([0, 2, 0, 0]), np.array([1, 1, 1, 0], np.float32)),
  )
  assert got == pytest.approx({"matched/accuracy": 0.75, "mismatched/accuracy": 2 / 3})


def test_compute_metrics_drops_zero_weight_rows():
  # Without row 2 (weight 0): predictions 1 0 1 vs labels 1 0 1.
  got = metrics.compute_metrics(
    ["accuracy", "f1"],
    np.array([1, 0, 1, 1]),
    np.array([1, 0, 0, 1]),
    weights=np.array([1.0, 1.0, 0.0, 1.0]),
  )
  assert got == {"accuracy": 1.0, "f1": 1.0}
  got = metrics.split_metrics(["accuracy"], {"validation": (PREDICTIONS, LABELS)})
  assert got == pytest.approx({"validation/accuracy": 0.6})
  with pytest.raises(ValueError, match="Unknown metric 'bleu'"):
    metrics.compute_metrics(["bleu"], PREDICTIONS, LABELS)
  with pytest.raises(ValueError, match="same shape"):
    metrics.accuracy([1, 0], [1, 0, 1])


def test_predictions_from_logits():
  logits = np.array([[0.1, 0.9, 0.0], [2.0, -1.0, 0.5]])
  np.testing.assert_array_equal(metrics.predictions_from_logits(logits, 3), [1, 0])
  scores = metrics.predictions_from_logits(np.array([[0.5], [2.5]]), 1)
  np.testing.assert_array_equal(scores, [0.5, 2.5])


def test_every_dataset_metric_is_known():
  from linformer.data import datasets  # pylint: disable=g-import-not-at-top

  for spec in datasets.DATASETS.values():
    assert set(spec.metrics) <= set(metrics.METRICS), spec.name
    split, name = spec.main_metric.split("/")
    assert name in spec.metrics and split in spec.eval_split_names, spec.name
