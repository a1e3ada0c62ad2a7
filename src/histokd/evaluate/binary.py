"""Binary metrics of a report with percentile-bootstrap 95% CIs (bag level, and tile level resampling slides).

Metrics are computed with numpy (same definitions as scikit-learn, checked in the tests, but without its
per-call overhead, which dominates a bootstrap); the CI is the percentile interval of ``n_boot`` bootstrap
resamples (seeded, so reports are reproducible). Tile-level metrics resample *slides* (cluster
bootstrap): tiles of one slide are correlated, and resampling them independently would give CIs that
are too narrow. :mod:`histokd.outputs.tables` formats what this module computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class MetricRow:
    """One metric with its 95% CI (NaN when undefined, e.g. AUC with a single class)."""

    name: str
    value: float
    low: float = math.nan
    high: float = math.nan
    n: int = 0



def auc_score(y: np.ndarray, s: np.ndarray, _t: float = 0.5) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count 1/2); equals sklearn's, without its per-call
    validation overhead, which dominates in the bootstrap."""
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]  # average 1-based ranks of tied scores
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def average_precision(y: np.ndarray, s: np.ndarray, _t: float = 0.5) -> float:
    """Average precision, sklearn's definition: sum over distinct thresholds of (R_k - R_{k-1}) * P_k."""
    n1 = int(y.sum())
    if n1 == 0:
        return math.nan
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]  # last index of each distinct score
    tps = np.cumsum(ys)[last]
    precision = tps / (last + 1)
    recall = tps / n1
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _acc(y: np.ndarray, s: np.ndarray, t: float) -> float:
    return float(np.mean((s >= t) == (y == 1)))


def _bacc(y: np.ndarray, s: np.ndarray, t: float) -> float:
    pred = s >= t
    pos, neg = y == 1, y == 0
    if not pos.any() or not neg.any():
        return math.nan
    return float((pred[pos].mean() + (~pred[neg]).mean()) / 2)


def _f1(y: np.ndarray, s: np.ndarray, t: float) -> float:
    pred = s >= t
    tp = int(np.sum(pred & (y == 1)))
    denom = int(pred.sum()) + int(y.sum())
    return 0.0 if denom == 0 else 2 * tp / denom


#: Binary metrics of (y_true [N] in {0,1}, score [N], threshold) -> value. Name -> function.
BINARY_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, float], float]] = {
    "AUC": auc_score,
    "average precision": average_precision,
    "accuracy": _acc,
    "balanced accuracy": _bacc,
    "F1": _f1,
}


def binary_metrics(
    y_true: np.ndarray,
    score: np.ndarray,
    threshold: float = 0.5,
    groups: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[MetricRow]:
    """Metrics of a binary problem with percentile-bootstrap 95% CIs.

    ``y_true`` [N] in {0, 1}; ``score`` [N] probability of the positive class; ``threshold`` for the
    thresholded metrics; ``groups`` [N] cluster ids (e.g. slide of each tile): resampling draws whole
    groups. ``names`` picks from :data:`BINARY_METRICS` (default all).
    """
    y = np.asarray(y_true).astype(int)
    s = np.asarray(score, dtype=np.float64)
    names = list(names or BINARY_METRICS)
    rows = [MetricRow(n, BINARY_METRICS[n](y, s, threshold), n=len(y)) for n in names]
    if len(y) < 2 or n_boot <= 0:
        return rows
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(len(y))]
    else:
        _, inv = np.unique(np.asarray(groups), return_inverse=True)
        members = [np.flatnonzero(inv == g) for g in range(inv.max() + 1)]
    if len(members) < 2:
        return rows
    boots = np.full((n_boot, len(names)), np.nan)
    for b in range(n_boot):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[i] for i in pick])
        yb, sb = y[idx], s[idx]
        for j, n in enumerate(names):
            boots[b, j] = BINARY_METRICS[n](yb, sb, threshold)
    for j, row in enumerate(rows):
        col = boots[:, j][np.isfinite(boots[:, j])]
        # a CI from a handful of defined resamples would be misleading
        if len(col) >= max(20, n_boot // 10) and math.isfinite(row.value):
            row.low, row.high = (float(v) for v in np.percentile(col, [2.5, 97.5]))
    return rows


def confusion_matrix(true: Sequence[str], pred: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """[C, C] counts, rows = true class, columns = predicted class, in ``classes`` order."""
    index = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(true, pred):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
    return cm


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width bins of predicted probability: ``(mean predicted [B], observed frequency [B], count [B])``
    for the non-empty bins."""
    y, p = np.asarray(y, dtype=float), np.clip(np.asarray(p, dtype=float), 0, 1)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    keep = count > 0
    mean_p = np.bincount(idx, weights=p, minlength=n_bins)[keep] / count[keep]
    freq = np.bincount(idx, weights=y, minlength=n_bins)[keep] / count[keep]
    return mean_p, freq, count[keep]


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE: count-weighted mean |observed - predicted| over equal-width bins."""
    mean_p, freq, count = calibration_bins(y, p, n_bins)
    return float(np.sum(count * np.abs(freq - mean_p)) / max(count.sum(), 1))
