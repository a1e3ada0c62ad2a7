"""The NumPy metrics and folds equal scikit-learn's (which the project no longer imports for them)."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from histokd.evaluate.metrics import average_precision, balanced_accuracy, bag_auc, f1, ovr_auc, roc_auc
from histokd.evaluate.protocols import cv_folds, stratified_kfold


def _cases():
    rng = np.random.default_rng(0)
    for n in (2, 5, 17, 200):
        for ties in (False, True):
            for _ in range(5):
                y = rng.integers(0, 2, n)
                if y.min() == y.max():
                    y[0] = 1 - y[0]
                s = rng.normal(size=n) + y * rng.uniform(-1, 2)
                if ties:
                    s = np.round(s, 0)
                yield y, s.astype(rng.choice([np.float32, np.float64]))


@pytest.mark.parametrize("y,s", list(_cases()))
def test_binary_scores_equal_sklearn(y, s):
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    pred = (s > np.median(s)).astype(int)
    assert balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert f1(y, pred) == pytest.approx(f1_score(y, pred, zero_division=0), abs=1e-12)


def test_one_class_is_nan_and_known_values():
    assert np.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert np.isnan(average_precision([0, 0], [0.1, 0.2]))
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert average_precision([0, 1, 1], [0.9, 0.8, 0.1]) == pytest.approx((0.5 + 2 / 3) / 2)
    assert f1([0, 0], [0, 0]) == 0.0  # no positive anywhere: 0, not a division by zero
    assert np.isnan(roc_auc([0, 1, 1], [0.1, np.nan, 0.3]))  # a diverged model gets no number
    assert np.isnan(average_precision([0, 1, 1], [0.1, np.inf, 0.3]))


def test_multiclass_equals_sklearn_and_falls_back():
    rng = np.random.default_rng(1)
    for _ in range(10):
        y = rng.permutation(np.r_[0, 1, 2, rng.integers(0, 3, 40)])
        logits = rng.normal(size=(len(y), 3)) + np.eye(3)[y]
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        ref = roc_auc_score(y, p, multi_class="ovr", average="macro", labels=[0, 1, 2])
        assert ovr_auc(y, p) == pytest.approx(ref, abs=1e-12)
        pred = p.argmax(1)
        assert f1(y, pred, labels=[0, 1, 2]) == pytest.approx(
            f1_score(y, pred, average="macro", labels=[0, 1, 2], zero_division=0), abs=1e-12)
        assert balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    # a class absent from the labels: macro AUC is undefined, bag_auc scores not-negative vs negative
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.6, 0.2, 0.2], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    assert np.isnan(ovr_auc(y, p))
    assert bag_auc(p, y, neg=0) == roc_auc_score(y != 0, 1 - p[:, 0])


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_folds_equal_sklearn_stratified_kfold(k, seed):
    rng = np.random.default_rng(seed + 100 * k)
    y = rng.integers(0, 3 if k < 10 else 2, 12 * k + int(rng.integers(0, 9)))
    y[: 2 * k] = np.arange(2 * k) % (y.max() + 1)  # every class at least k times
    ref = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    ours = list(stratified_kfold(y, k, seed))
    assert len(ours) == k
    for (a_tr, a_te), (b_tr, b_te) in zip(ref, ours, strict=True):
        np.testing.assert_array_equal(a_tr, b_tr)
        np.testing.assert_array_equal(a_te, b_te)
    folds = list(cv_folds(y, k, repeats=2, seed=seed))
    assert len(folds) == 2 * k
    tests = np.concatenate([f.test for f in folds if f.repeat == 0])
    np.testing.assert_array_equal(np.sort(tests), np.arange(len(y)))  # every row tested once per repeat
