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
    from scipy.special import stdtrit  # the t quantile without importing scipy.stats (0.3 s)

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": float("nan"), "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    m = float(v.mean())
    if len(v) < 2:
        return {"mean": m, "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 1}
    s = float(v.std(ddof=1))
    h = float(stdtrit(len(v) - 1, 1 - alpha / 2) * s / np.sqrt(len(v)))
    return {"mean": m, "std": s, "ci_low": m - h, "ci_high": m + h, "n": int(len(v))}


def resample_counts(y: np.ndarray, n_boot: int, seed: int = 0, stratify: bool = True) -> np.ndarray:
    """Bootstrap resamples as multiplicities: ``W`` [n_boot, n] int, row b = how often each row is drawn.

    Rows are drawn with replacement within each class of ``y`` when ``stratify`` (class counts kept), so a
    metric computed with ``W`` as weights equals the metric on the explicit resample ``repeat(arange(n), W[b])``.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(len(y))]
    W = np.zeros((n_boot, len(y)), dtype=np.int64)
    rows = np.arange(n_boot)[:, None]
    for g in groups:
        draws = g[rng.integers(0, len(g), (n_boot, len(g)))]  # [n_boot, |g|] row indices
        np.add.at(W, (np.broadcast_to(rows, draws.shape), draws), 1)
    return W


def _weighted_auc(W: np.ndarray, pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Binary AUC of every resample at once: ``W`` [B, n] multiplicities, ``pos`` [n] bool, ``score`` [n].

    AUC = Σ_ij w_i w_j K_ij / (Σ w_i · Σ w_j) over positives i and negatives j, K = 1[s_i > s_j] + ½ 1[s_i = s_j]
    (the Mann-Whitney statistic, ties counted half) -> [B] (NaN when a resample lacks a class)."""
    sp, sn = score[pos], score[~pos]
    K = (sp[:, None] > sn[None, :]).astype(np.float64) + 0.5 * (sp[:, None] == sn[None, :])
    wp, wn = W[:, pos].astype(np.float64), W[:, ~pos].astype(np.float64)
    num = np.einsum("bi,ij,bj->b", wp, K, wn)
    den = wp.sum(1) * wn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _weighted_bag_metrics(W: np.ndarray, y: np.ndarray, probs: np.ndarray, positive: int | None) -> dict[str, np.ndarray]:
    """:func:`histokd.evaluate.metrics.bag_metrics` of every resample ``W`` [B, n] at once -> metric -> [B]."""
    C = probs.shape[1]
    pred = probs.argmax(1)
    Wf = W.astype(np.float64)
    tot = Wf.sum(1)
    correct = (pred == y).astype(np.float64)
    out = {"accuracy": Wf @ correct / tot}
    present = np.stack([Wf[:, y == c].sum(1) > 0 for c in range(C)], 1)  # [B, C]
    n_present = present.sum(1)
    recall = np.stack([(Wf[:, y == c] @ correct[y == c]) / np.maximum(Wf[:, y == c].sum(1), 1) for c in range(C)], 1)
    bal = (recall * present).sum(1) / np.maximum(n_present, 1)
    out["balanced_accuracy"] = np.where(n_present > 1, bal, np.nan)

    def f1_of(c: int) -> np.ndarray:
        tp = Wf @ ((pred == c) & (y == c)).astype(np.float64)
        fp = Wf @ ((pred == c) & (y != c)).astype(np.float64)
        fn = Wf @ ((pred != c) & (y == c)).astype(np.float64)
        d = 2 * tp + fp + fn
        return np.where(d > 0, 2 * tp / np.where(d > 0, d, 1), 0.0)  # sklearn's zero_division=0

    if C == 2:
        pos = 1 if positive is None else positive
        out["auc"] = np.where(n_present > 1, _weighted_auc(W, y == pos, probs[:, pos]), np.nan)
        out["f1"] = f1_of(pos)
    else:
        p = probs / probs.sum(1, keepdims=True)
        aucs = np.stack([_weighted_auc(W, y == c, p[:, c]) for c in range(C)], 1)
        out["auc"] = np.where(n_present == C, aucs.mean(1), np.nan)
        out["f1"] = np.stack([f1_of(c) for c in range(C)], 1).mean(1)
    return out


def bootstrap_bag_metrics(y: np.ndarray, probs: np.ndarray, positive: int | None = None, n_boot: int = 1000,
                          alpha: float = 0.05, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Every bag metric with its stratified percentile-bootstrap (1-alpha) CI, all resamples vectorised.

    ``y`` [n] class indices (-1 ignored), ``probs`` [n, C] -> {metric: (value, low, high)}. One matrix
    product per metric instead of ``n_boot`` scikit-learn calls (1000 resamples of 100 bags: milliseconds). Same
    estimator as ``bootstrap_ci(lambda y, p: bag_metrics(y, p, positive)[m], ...)``; the random draws differ.
    """
    from histokd.evaluate.metrics import BAG_METRICS, bag_metrics

    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    keep = y >= 0
    y, probs = y[keep], probs[keep]
    point = bag_metrics(y, probs, positive)
    nan = float("nan")
    if len(y) < 2 or n_boot <= 0:
        return {m: (point[m], nan, nan) for m in BAG_METRICS}
    boot = _weighted_bag_metrics(resample_counts(y, n_boot, seed), y, probs, positive)
    out = {}
    for m in BAG_METRICS:
        v = boot[m][np.isfinite(boot[m])]
        lo, hi = (np.quantile(v, [alpha / 2, 1 - alpha / 2]) if len(v) else (nan, nan))
        out[m] = (point[m], float(lo), float(hi))
    return out
