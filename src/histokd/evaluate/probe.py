"""Linear probe of frozen tile features on tile labels (tumour vs normal from the masks): the statistics.

The verbs (collecting a workspace's labelled tiles, ``histokd encoder probe``, the encoder comparison) are
in :mod:`histokd.pipeline.probe`; this module fits and scores the probe on arrays.

The probe measures how linearly separable the tumour tiles are in an encoder's feature space, which is
how More From Less encoders are compared with the H&E-only SSL control, ImageNet features and
handcrafted features. Protocol (fixed, seeded):

- tile labels: contract 6 (``RUN/features/<enc>/instance_labels/<slide>.h5``, a tile is tumour when its
  mask fraction is above ``threshold``; the pipeline writes them from the cohort's masks when missing); unknown (-1)
  tiles are dropped;
- training tiles: the slides of ``train_splits`` (default ``train``); test tiles: ``test_splits``
  (default ``test``). Slides never mix between the two;
- features standardised with the training tiles' mean/std, then L2-regularised logistic regression
  (lbfgs), class-balanced weights so that the rarer tumour tiles count as much as normal ones;
- everything the probe chooses is chosen on the training slides only, from out-of-fold predictions of a
  slide-grouped, class-stratified cross-validation (``cv_folds`` folds): the inverse regularisation ``C``
  (the grid ``C_GRID`` by out-of-fold AUC, unless ``C`` is given) and the decision threshold (the one
  maximising out-of-fold balanced accuracy, i.e. Youden's J). A fixed p = 0.5 is not a sensible operating
  point here: with few tumour tiles a high-dimensional probe separates its own training tiles perfectly,
  so its test probabilities are overconfident and their 0.5 crossing is arbitrary;
- reported on the test tiles: ROC AUC and balanced accuracy (at the chosen threshold) with stratified
  tile-bootstrap 95 % CIs, accuracy, and the balanced accuracy at p = 0.5 for reference.

The pipeline writes the result to ``RUN/probes/<encoder dir>.json``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

log = logging.getLogger("histokd")


@dataclass
class ProbeResult:
    encoder: str
    dim: int
    n_train: int
    n_test: int
    pos_train: int
    pos_test: int
    accuracy: float
    balanced_accuracy: float
    auc: float
    auc_ci95: tuple[float, float]
    balanced_accuracy_ci95: tuple[float, float]
    balanced_accuracy_at_half: float
    decision_threshold: float
    cv_auc: float
    seed: int
    threshold: float
    C: float
    train_slides: int
    test_slides: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


C_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
"""Inverse L2 strengths tried by the probe when ``C`` is not given (chosen by out-of-fold AUC)."""


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability threshold maximising balanced accuracy (Youden's J) of scores ``p`` on labels ``y``.

    Returned as the midpoint between the best score and the next lower one, so that it generalises
    rather than sitting on a training tile's score.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, p)
    i = int(np.argmax(tpr - fpr))
    t = float(thr[i])
    if not np.isfinite(t):  # roc_curve's first threshold is +inf (nothing positive)
        return 1.0
    lower = p[p < t]
    return float((t + lower.max()) / 2) if len(lower) else t


def fit_logistic(x: np.ndarray, y: np.ndarray, C: float, seed: int, max_iter: int):  # noqa: ANN202 - sklearn model
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced", random_state=seed).fit(x, y)


def out_of_fold(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, C: float, seed: int, folds: int, max_iter: int = 2000
) -> np.ndarray:
    """Out-of-fold probabilities ``[N]`` of the probe on standardised ``x`` ``[N, D]``: slide-grouped,
    class-stratified folds (no slide in both the fitting and the scored part). Tiles of a fold whose
    fitting part lacks a class are NaN."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    k = max(2, min(folds, n_groups))
    oof = np.full(len(y), np.nan)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fit_idx, score_idx in cv.split(x, y, groups):
        if len(np.unique(y[fit_idx])) < 2:
            continue
        oof[score_idx] = fit_logistic(x[fit_idx], y[fit_idx], C, seed, max_iter).predict_proba(x[score_idx])[:, 1]
    return oof


def score_probe(
    xtr: np.ndarray, ytr: np.ndarray, gtr: np.ndarray, xte: np.ndarray, yte: np.ndarray, gte: np.ndarray, *,
    features: str, threshold: float, seed: int = 0, C: float | None = None, max_iter: int = 2000,
    cv_folds: int = 4, n_boot: int = 1000,
) -> ProbeResult:
    """Fit the probe on training tiles ``xtr`` ``[N, D]`` (labels ``ytr`` 0/1, slide index ``gtr``) and score
    it on test tiles ``xte`` / ``yte`` (slide index ``gte``); both sets need both classes.

    ``C=None`` chooses the inverse L2 strength from ``C_GRID`` by slide-grouped out-of-fold AUC on the
    training slides; the decision threshold is always chosen on the same out-of-fold predictions.
    ``features`` (the encoder spec) and ``threshold`` (the tile-label mask fraction) are recorded in the result.
    ``n_boot``: tile-bootstrap resamples of the 95% CIs.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    from histokd.evaluate.bootstrap import bootstrap_ci

    ntr_s, nte_s = len(np.unique(gtr)), len(np.unique(gte))
    mean = xtr.mean(0)
    std = np.maximum(xtr.std(0), 1e-6)  # constant features (dead units) must not divide by 0
    ztr = (xtr - mean) / std
    # Model selection on the training slides only: out-of-fold predictions, slides never split.
    cands = (C,) if C is not None else C_GRID
    best: tuple[float, float, np.ndarray] | None = None
    for c in cands:
        oof = out_of_fold(ztr, ytr, gtr, c, seed, cv_folds, max_iter)
        ok = np.isfinite(oof)
        cv_auc = float(roc_auc_score(ytr[ok], oof[ok])) if len(np.unique(ytr[ok])) == 2 else float("nan")
        if best is None or (np.isfinite(cv_auc) and not cv_auc <= best[1]):
            best = (c, cv_auc, oof)
    assert best is not None
    C_used, cv_auc, oof = best
    if C is None and not np.isfinite(cv_auc):
        # too few training slides of each class for a grouped CV: fall back to a moderate, fixed C
        log.warning("probe %s: no out-of-fold estimate (too few training slides); C = 1, threshold 0.5", features)
        C_used = 1.0
    ok = np.isfinite(oof)
    thr = best_threshold(ytr[ok], oof[ok]) if len(np.unique(ytr[ok])) == 2 else 0.5
    clf = fit_logistic(ztr, ytr, C_used, seed, max_iter)
    p = clf.predict_proba((xte - mean) / std)[:, 1]
    pred = (p >= thr).astype(np.int8)
    # tiles are resampled within each class (1000 resamples, seeded): the CI shows how few tumour tiles
    # a test split holds, not slide-to-slide variation
    _, lo, hi = bootstrap_ci(roc_auc_score, yte, p, n_boot=n_boot, seed=seed)
    def bacc_fn(yy: np.ndarray, pp: np.ndarray) -> float:  # numpy, not sklearn: 1000 resamples stay fast
        hit = (pp >= thr) == (yy == 1)
        return float((hit[yy == 1].mean() + hit[yy == 0].mean()) / 2)

    bacc, blo, bhi = bootstrap_ci(bacc_fn, yte, p, n_boot=n_boot, seed=seed)
    res = ProbeResult(
        encoder=features, dim=int(xtr.shape[1]), n_train=len(ytr), n_test=len(yte), pos_train=int(ytr.sum()),
        pos_test=int(yte.sum()), accuracy=float(accuracy_score(yte, pred)),
        balanced_accuracy=float(bacc), auc=float(roc_auc_score(yte, p)),
        auc_ci95=(float(lo), float(hi)), balanced_accuracy_ci95=(float(blo), float(bhi)),
        balanced_accuracy_at_half=float(balanced_accuracy_score(yte, (p >= 0.5).astype(np.int8))),
        decision_threshold=float(thr), cv_auc=float(cv_auc), seed=seed, threshold=threshold, C=float(C_used),
        train_slides=ntr_s, test_slides=nte_s,
    )
    log.info("probe %s: AUC %.3f, balanced acc %.3f at p >= %.3g (C %g chosen on train, out-of-fold AUC %.3f), "
             "acc %.3f (%d test tiles)", features, res.auc, res.balanced_accuracy, thr, C_used, cv_auc,
             res.accuracy, res.n_test)
    return res


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` (dicts); ``columns`` = [(key, header)]; floats with 3 decimals."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if np.isnan(v) else f"{v:.3f}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"
