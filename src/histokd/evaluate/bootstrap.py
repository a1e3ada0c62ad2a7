"""Bootstrap confidence intervals (percentile), stratified by class so every resample has both classes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_ci(
    fn: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    scores: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stratify: bool = True,
) -> tuple[float, float, float]:
    """``fn(y, scores)`` on the data and its (1-alpha) percentile bootstrap CI -> (value, low, high).

    Resamples rows with replacement (within each class of ``y`` when ``stratify``); NaN resample values
    are dropped. With fewer than 2 rows the CI is (NaN, NaN).
    """
    y = np.asarray(y)
    scores = np.asarray(scores)
    value = float(fn(y, scores))
    if len(y) < 2 or n_boot <= 0:
        return value, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(len(y))]
    vals = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        vals[b] = fn(y[idx], scores[idx])
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return value, float("nan"), float("nan")
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return value, float(lo), float(hi)


def mean_ci(values: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    """Mean, std (ddof=1) and Student-t (1-alpha) CI of the mean of ``values`` (NaNs dropped)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": float("nan"), "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    m = float(v.mean())
    if len(v) < 2:
        return {"mean": m, "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 1}
    s = float(v.std(ddof=1))
    h = float(stats.t.ppf(1 - alpha / 2, len(v) - 1) * s / np.sqrt(len(v)))
    return {"mean": m, "std": s, "ci_low": m - h, "ci_high": m + h, "n": int(len(v))}
