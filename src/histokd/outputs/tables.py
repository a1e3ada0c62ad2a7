"""Tables of a report: per-tile predictions (``tiles.csv``) and metrics with bootstrap 95% CIs.

Metrics are computed with numpy (same definitions as scikit-learn, checked in the tests, but without its
per-call overhead, which dominates a bootstrap); the CI is the percentile interval of ``n_boot`` bootstrap
resamples (seeded, so reports are reproducible). Tile-level metrics resample *slides* (cluster
bootstrap): tiles of one slide are correlated, and resampling them independently would give CIs that
are too narrow.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histokd.workspace import write_frame_csv


@dataclass
class MetricRow:
    """One metric with its 95% CI (NaN when undefined, e.g. AUC with a single class)."""

    name: str
    value: float
    low: float = math.nan
    high: float = math.nan
    n: int = 0

    def formatted(self) -> str:
        if not math.isfinite(self.value):
            return "n/a"
        if math.isfinite(self.low) and math.isfinite(self.high):
            return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"
        return f"{self.value:.3f}"


# ---------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------


def _auc(y: np.ndarray, s: np.ndarray, _t: float) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count 1/2); equals sklearn's, without its per-call
    validation overhead, which dominates in the bootstrap."""
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]  # average 1-based ranks of tied scores
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _ap(y: np.ndarray, s: np.ndarray, _t: float) -> float:
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
    "AUC": _auc,
    "average precision": _ap,
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


def flatten_metrics(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten a ``metrics.json`` of unknown nesting into (key, text) rows for display.

    A dict holding a value and a CI (keys ``value``/``mean``/``estimate`` and ``low``/``high``,
    ``ci_low``/``ci_high`` or ``ci: [lo, hi]``) becomes one row ``"v [lo, hi]"``.
    """
    rows: list[tuple[str, str]] = []
    if isinstance(obj, Mapping):
        ci = _as_ci(obj)
        if ci is not None:
            return [(prefix or "value", ci)]
        for k, v in obj.items():
            rows.extend(flatten_metrics(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)) and len(obj) <= 12 and all(isinstance(v, (int, float)) for v in obj):
        rows.append((prefix, ", ".join(_fmt(v) for v in obj)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            rows.extend(flatten_metrics(v, f"{prefix}[{i}]"))
    else:
        rows.append((prefix, _fmt(obj)))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _as_ci(d: Mapping) -> str | None:
    val = next((d[k] for k in ("value", "mean", "estimate", "point") if k in d), None)
    if not isinstance(val, (int, float)) or isinstance(val, bool):
        return None
    lo = next((d[k] for k in ("low", "ci_low", "lower", "lo") if k in d), None)
    hi = next((d[k] for k in ("high", "ci_high", "upper", "hi") if k in d), None)
    if lo is None and isinstance(d.get("ci"), (list, tuple)) and len(d["ci"]) == 2:
        lo, hi = d["ci"]
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        return f"{_fmt(float(val))} [{_fmt(float(lo))}, {_fmt(float(hi))}]"
    return _fmt(float(val)) if len(d) == 1 else None


# ---------------------------------------------------------------------------------------------------------
# tiles.csv
# ---------------------------------------------------------------------------------------------------------


def tiles_frame(
    slide_id: str,
    coords: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    instance_scores: np.ndarray | None = None,
    gt_fraction: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per tile: ``slide_id, x, y, prob_<class>..., [instance_score], [gt_tumour_fraction]``.

    ``coords`` [N, 2] level-0 top-left px; ``probs`` [N, C]; ``instance_scores`` [N] raw teacher
    evidence; ``gt_fraction`` [N] fraction of the tile inside the ground-truth mask.
    """
    coords = np.asarray(coords)
    df = pd.DataFrame({"slide_id": slide_id, "x": coords[:, 0].astype(np.int64), "y": coords[:, 1].astype(np.int64)})
    for j, c in enumerate(classes):
        df[f"prob_{c}"] = np.asarray(probs)[:, j].astype(np.float32)
    if instance_scores is not None:
        df["instance_score"] = np.asarray(instance_scores, dtype=np.float32)
    if gt_fraction is not None:
        df["gt_tumour_fraction"] = np.asarray(gt_fraction, dtype=np.float32)
    return df


def write_csv(path: str | os.PathLike[str], df: pd.DataFrame) -> Path:
    """Write a DataFrame as CSV atomically (no index; floats with 6 significant digits; quoted and
    spreadsheet-safe, see :func:`histokd.workspace.write_frame_csv`)."""
    return write_frame_csv(path, df, float_format="%.6g")
