"""Metrics against hand-computed values, bootstrap CI sanity, CV stratification."""

from __future__ import annotations

import numpy as np
import pytest

from histokd.evaluate.bootstrap import bootstrap_ci, mean_ci
from histokd.evaluate.metrics import bag_auc, bag_metrics, best_f1_threshold, instance_metrics
from histokd.evaluate.protocols import cv_folds, parse_protocol, stratified_split
from histokd.errors import InputError


def test_bag_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.8])  # positive-class probs
    probs = np.stack([1 - p1, p1], 1)
    m = bag_metrics(y, probs, 1)
    # pairs (pos, neg): (0.4>0.1) (0.4<0.6) (0.8>0.1) (0.8>0.6) -> 3/4
    assert m["auc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.5)  # preds 0,1,0,1
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)  # tp=1 fp=1 fn=1


def test_bag_metrics_positive_class_first_and_multiclass() -> None:
    y = np.array([0, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    m = bag_metrics(y, probs, positive=0)  # class 0 is "tumour"
    assert m["auc"] == pytest.approx(1.0)
    y3 = np.array([0, 1, 2, 2])
    p3 = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2]])
    m3 = bag_metrics(y3, p3)
    assert m3["accuracy"] == pytest.approx(0.75) and 0 < m3["auc"] <= 1
    assert np.isnan(bag_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]]))["auc"])


def test_instance_metrics_ignore_unknown() -> None:
    m = instance_metrics(np.array([1, 0, -1, 0, 1]), np.array([0.9, 0.1, 100.0, 0.2, 0.3]))
    assert m["auc"] == pytest.approx(1.0) and m["n"] == 4 and m["n_pos"] == 2
    # AP: ranks 0.9(+) 0.3(+) 0.2 0.1 -> precision 1 at both positives
    assert m["ap"] == pytest.approx(1.0)


def test_bootstrap_ci_contains_value_and_shrinks() -> None:
    rng = np.random.default_rng(0)

    def acc(y, s):
        return float(((s > 0.5) == y).mean())

    y_small = rng.integers(0, 2, 30)
    s_small = np.where(rng.random(30) < 0.8, y_small, 1 - y_small).astype(float)
    v, lo, hi = bootstrap_ci(acc, y_small, s_small, 500, seed=1)
    assert lo <= v <= hi
    y_big = rng.integers(0, 2, 3000)
    s_big = np.where(rng.random(3000) < 0.8, y_big, 1 - y_big).astype(float)
    v2, lo2, hi2 = bootstrap_ci(acc, y_big, s_big, 500, seed=1)
    assert (hi2 - lo2) < (hi - lo) / 3 and lo2 < 0.8 < hi2


def test_mean_ci() -> None:
    r = mean_ci(np.array([1.0, 2.0, 3.0]))
    assert r["mean"] == 2.0 and r["std"] == pytest.approx(1.0)
    assert r["ci_high"] - 2.0 == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)  # t(0.975, 2)


def test_cv_stratified_disjoint_and_seeded() -> None:
    y = np.array([0] * 30 + [1] * 20)
    folds = list(cv_folds(y, 5, 2, seed=3, val_fraction=0.2))
    assert len(folds) == 10
    for f in folds:
        assert not set(f.train) & set(f.test) and not set(f.val) & set(f.test) and not set(f.train) & set(f.val)
        assert y[f.test].sum() == 4 and len(f.test) == 10  # exactly stratified
    for r in range(2):
        covered = np.concatenate([f.test for f in folds if f.repeat == r])
        assert sorted(covered) == list(range(50))
    again = list(cv_folds(y, 5, 2, seed=3, val_fraction=0.2))
    assert all((a.test == b.test).all() and (a.val == b.val).all() for a, b in zip(folds, again))
    assert not (folds[0].test == folds[5].test).all()  # repeats differ


def test_protocol_parsing_and_split() -> None:
    assert parse_protocol("cv:10x5") == ("cv", 10, 5) and parse_protocol("cv:3") == ("cv", 3, 1)
    with pytest.raises(InputError):
        parse_protocol("cv:1x5")
    s = stratified_split([0] * 20 + [1] * 20, seed=0)
    assert s.count("test") == 6 and s.count("val") == 6


@pytest.mark.parametrize("C", [2, 3])
def test_vectorised_bootstrap_equals_explicit_resamples(C: int) -> None:
    from histokd.evaluate.bootstrap import _weighted_bag_metrics, bootstrap_bag_metrics, resample_counts

    rng = np.random.default_rng(C)
    y = rng.integers(0, C, 30)
    p = rng.dirichlet(np.ones(C), 30)
    p[:, 1] += 0.4 * (y == 1)
    p = np.round(p / p.sum(1, keepdims=True), 1)  # rounding makes ties, which AUC counts half
    W = resample_counts(y, 25, seed=2)
    assert (W.sum(1) == 30).all()
    assert all((W[:, y == c].sum(1) == (y == c).sum()).all() for c in range(C))  # stratified
    fast = _weighted_bag_metrics(W, y, p, None)
    for b in range(25):
        idx = np.repeat(np.arange(30), W[b])
        ref = bag_metrics(y[idx], p[idx])
        for m, v in ref.items():
            assert fast[m][b] == pytest.approx(v, abs=1e-12, nan_ok=True), (m, b)
    res = bootstrap_bag_metrics(y, p, None, 200, seed=1)
    for m, (v, lo, hi) in res.items():
        assert v == pytest.approx(bag_metrics(y, p)[m]) and lo <= v <= hi and lo < hi


def test_vectorised_bootstrap_is_fast() -> None:
    import time

    from histokd.evaluate.bootstrap import bootstrap_bag_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(0.3 * y + 0.7 * rng.random(200), 0, 1)
    t = time.perf_counter()
    bootstrap_bag_metrics(y, np.stack([1 - p1, p1], 1), 1, 1000)
    assert time.perf_counter() - t < 5.0  # one scikit-learn call per resample and metric took seconds


def test_bag_auc_scores_not_negative() -> None:
    # two classes, negative class first: "not negative" = 1 - P(neg); same pairs as the bag_metrics example
    p1 = np.array([0.1, 0.6, 0.4, 0.8])
    assert bag_auc(np.stack([1 - p1, p1], 1), np.array([0, 0, 1, 1]), neg=0) == pytest.approx(0.75)
    # negative class second: the labels != neg are the positives
    assert bag_auc(np.stack([p1, 1 - p1], 1), np.array([1, 1, 0, 0]), neg=1) == pytest.approx(0.75)
    assert np.isnan(bag_auc(np.stack([1 - p1, p1], 1), np.zeros(4, int), neg=0))
    # three classes: macro one-vs-rest
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.2, 0.2], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8]])
    assert bag_auc(probs, np.array([0, 0, 1, 1, 2]), neg=0) == pytest.approx(1.0)
    # three classes, one absent from the labels: not-negative vs negative, never NaN (it scores checkpoints)
    absent = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    assert bag_auc(absent, np.array([0, 1, 0, 1]), neg=0) == pytest.approx(1.0)


def test_best_f1_threshold() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    labels = np.array([1, 1, 0, 0, 0])
    assert best_f1_threshold(scores, labels) == pytest.approx(0.8)  # the top two: F1 = 1
    assert best_f1_threshold(scores, np.zeros(5, int)) == 0.5  # undefined with one class
