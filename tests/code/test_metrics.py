"""Evaluation metrics computed with numpy agree with scikit-learn's."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from components.model.metrics import class_metrics


def test_class_metrics_match_scikit_learn_including_empty_classes() -> None:
    rng = np.random.default_rng(0)
    k = 6
    targets = rng.integers(0, 4, 200)  # classes 4 and 5 never occur, class 5 is never predicted
    predicted = np.where(rng.random(200) < 0.6, targets, rng.integers(0, 5, 200))
    matrix, precision, recall, f1 = class_metrics(targets, predicted, k)
    p, r, f, support = precision_recall_fscore_support(targets, predicted, labels=list(range(k)), zero_division=0)
    np.testing.assert_array_equal(matrix, confusion_matrix(targets, predicted, labels=list(range(k))))
    np.testing.assert_allclose(precision, p)
    np.testing.assert_allclose(recall, r)
    np.testing.assert_allclose(f1, f)
    np.testing.assert_array_equal(matrix.sum(1), support)
