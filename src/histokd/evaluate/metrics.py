"""Bag and instance metrics: AUC, accuracy, balanced accuracy, F1, average precision.

Binary tasks score the positive class (``tumour``, else the last class); multi-class tasks use macro
one-vs-rest AUC and macro F1. Undefined values (one class only) are NaN, never an exception.

The scores are computed in NumPy (:func:`roc_auc` and :func:`average_precision` on the bootstrap's own
formulas in :mod:`histokd.evaluate.binary`; :func:`balanced_accuracy`, :func:`f1`) rather than through
scikit-learn, whose import costs 0.6 s of every ``bench`` and ``label`` run;
``tests/evaluate/test_metric_formulas.py`` holds them equal to scikit-learn's on random and tied inputs.
"""

from __future__ import annotations

import numpy as np

from histokd.evaluate.binary import auc_score
from histokd.evaluate.binary import average_precision as _binary_ap


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` [n] against binary ``labels`` [n] (truthy = positive): the Mann-Whitney statistic of
    :func:`histokd.evaluate.binary.auc_score`. NaN when only one class is present, or when a score is not finite
    (a diverged model: no silent number)."""
    s = np.asarray(scores).reshape(-1)
    if not np.isfinite(s).all():
        return float("nan")
    return auc_score(np.asarray(labels).reshape(-1).astype(bool), s)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (:func:`histokd.evaluate.binary.average_precision`) of ``scores`` against binary
    ``labels``. NaN without positives or with a score that is not finite."""
    s = np.asarray(scores).reshape(-1)
    if not np.isfinite(s).all():
        return float("nan")
    return _binary_ap(np.asarray(labels).reshape(-1).astype(bool), s)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y``."""
    y, pred = np.asarray(y).reshape(-1), np.asarray(pred).reshape(-1)
    classes = np.unique(y)
    if len(classes) == 0:
        return float("nan")
    return float(np.mean([(pred[y == c] == c).mean() for c in classes]))


def f1(y: np.ndarray, pred: np.ndarray, labels: list[int] | None = None) -> float:
    """F1 of class 1 against the rest (``labels`` None, binary 0/1 input), or the macro F1 over ``labels``;
    a class never true nor predicted scores 0."""
    y, pred = np.asarray(y).reshape(-1), np.asarray(pred).reshape(-1)

    def one(c: int) -> float:
        tp = int(((pred == c) & (y == c)).sum())
        denom = int((pred == c).sum()) + int((y == c).sum())
        return 0.0 if denom == 0 else 2.0 * tp / denom

    return one(1) if labels is None else float(np.mean([one(c) for c in labels]))


def ovr_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC of class indices ``y`` [n] against ``probs`` [n, C]; NaN when a class is
    absent from ``y`` (its AUC is undefined)."""
    y = np.asarray(y).reshape(-1)
    aucs = [roc_auc(y == c, probs[:, c]) for c in range(probs.shape[1])]
    return float(np.mean(aucs))

BAG_METRICS = ("auc", "accuracy", "balanced_accuracy", "f1")
INSTANCE_METRICS = ("auc", "ap")


def bag_metrics(y: np.ndarray, probs: np.ndarray, positive: int | None = None) -> dict[str, float]:
    """``y`` [n] class indices (-1 = unknown, ignored), ``probs`` [n, C] -> {auc, accuracy, balanced_accuracy, f1}."""
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    keep = y >= 0
    y, probs = y[keep], probs[keep]
    nan = float("nan")
    if len(y) == 0:
        return dict.fromkeys(BAG_METRICS, nan)
    C = probs.shape[1]
    pred = probs.argmax(1)
    out = {"accuracy": float((pred == y).mean())}
    present = np.unique(y)
    out["balanced_accuracy"] = balanced_accuracy(y, pred) if len(present) > 1 else nan
    if C == 2:
        pos = 1 if positive is None else positive
        yb = (y == pos).astype(int)
        out["auc"] = roc_auc(yb, probs[:, pos]) if len(present) > 1 else nan
        out["f1"] = f1(yb, (pred == pos).astype(int))
    else:
        if len(present) == C:
            p = probs / probs.sum(1, keepdims=True)
            out["auc"] = ovr_auc(y, p)
        else:
            out["auc"] = nan
        out["f1"] = f1(y, pred, labels=list(range(C)))
    return out


def instance_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``labels`` [n] (1 positive, 0 negative, -1 unknown: ignored), ``scores`` [n] -> {auc, ap, n, n_pos}."""
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    keep = (labels >= 0) & np.isfinite(scores)
    lab, sc = labels[keep], scores[keep]
    n_pos = int((lab == 1).sum())
    out = {"n": int(len(lab)), "n_pos": n_pos, "auc": float("nan"), "ap": float("nan")}
    if 0 < n_pos < len(lab):
        out["auc"] = roc_auc(lab == 1, sc)
        out["ap"] = average_precision(lab == 1, sc)
    return out


def bag_auc(probs: np.ndarray, labels: np.ndarray, neg: int) -> float:
    """Bag AUC as the distillation methods select checkpoints: ``probs`` [n, C], ``labels`` [n], ``neg`` the
    negative class. Two classes: "not negative" scored by ``1 - P(neg)``; more: macro one-vs-rest on the
    raw probabilities, falling back to not-negative-vs-negative when a class is absent from ``labels`` (so a
    validation split that lacks a class still scores checkpoints); NaN with one class.
    (:func:`bag_metrics` scores the positive class and is NaN when a class is absent: the reports use it.)"""
    if len(np.unique(labels)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return roc_auc(labels != neg, 1 - probs[:, neg])
    v = ovr_auc(labels, probs)
    if np.isnan(v):
        v = roc_auc(labels != neg, 1 - probs[:, neg])
    return v


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold on ``scores`` maximising F1 against binary ``labels`` (0.5 when undefined)."""
    if labels.size == 0 or labels.min() == labels.max():
        return 0.5
    order = np.argsort(-scores)
    s, y = scores[order], labels[order].astype(np.float64)
    tp = np.cumsum(y)
    fp = np.cumsum(1 - y)
    f1 = 2 * tp / (tp + fp + y.sum())
    i = int(np.argmax(f1))
    return float(s[i])
