"""Bag and instance metrics: AUC, accuracy, balanced accuracy, F1, average precision.

Binary tasks score the positive class (``tumour``, else the last class); multi-class tasks use macro
one-vs-rest AUC and macro F1. Undefined values (one class only) are NaN, never an exception.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score, roc_auc_score

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
    out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred)) if len(present) > 1 else nan
    if C == 2:
        pos = 1 if positive is None else positive
        yb = (y == pos).astype(int)
        out["auc"] = float(roc_auc_score(yb, probs[:, pos])) if len(present) > 1 else nan
        out["f1"] = float(f1_score(yb, (pred == pos).astype(int), zero_division=0))
    else:
        if len(present) == C:
            p = probs / probs.sum(1, keepdims=True)
            out["auc"] = float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(C))))
        else:
            out["auc"] = nan
        out["f1"] = float(f1_score(y, pred, average="macro", labels=list(range(C)), zero_division=0))
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
        out["auc"] = float(roc_auc_score(lab, sc))
        out["ap"] = float(average_precision_score(lab, sc))
    return out


def bag_auc(probs: np.ndarray, labels: np.ndarray, neg: int) -> float:
    """Bag AUC as the distillation methods select checkpoints: ``probs`` [n, C], ``labels`` [n], ``neg`` the
    negative class. Two classes: "not negative" scored by ``1 - P(neg)``; more: macro one-vs-rest on the
    raw probabilities, falling back to not-negative-vs-negative when a class is absent from ``labels``
    (older scikit-learn raises there, recent versions return NaN with a warning: both fall back, so a
    validation split that lacks a class still scores checkpoints); NaN with one class.
    (:func:`bag_metrics` scores the positive class and is NaN when a class is absent: the reports use it.)"""
    import warnings

    if len(np.unique(labels)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels != neg, 1 - probs[:, neg]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = float(roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(probs.shape[1]))))
    except ValueError:
        v = float("nan")
    if np.isnan(v):
        v = float(roc_auc_score(labels != neg, 1 - probs[:, neg]))
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
