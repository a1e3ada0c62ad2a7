"""How far a slide's features lie from the training slides': an out-of-distribution (OOD) score and flag.

The measure (stored with a model, in its ``bundle.json``; documented in ``docs/predict.md``):

* a slide's *descriptor* is the mean of its tile features, ``[D]``;
* the training slides' descriptors are summarised by their per-dimension mean ``mu`` and standard deviation
  ``sigma`` (``sigma`` floored at ``0.1 x`` its median over the dimensions, so that a feature that is nearly
  constant on the training slides does not dominate);
* the score of a slide is the root-mean-square z-score of its descriptor, ``sqrt(mean(((x - mu) / sigma)^2))``:
  about 1 for a typical training slide, large for a slide whose tiles look unlike any training slide's
  (another stain, another tissue, a scanner artefact);
* the threshold is the 99th percentile of the training slides' *leave-one-out* scores (each slide scored
  against the summary of the others, so that the threshold is not set on slides that shaped ``mu`` and
  ``sigma``); a slide whose score is above it is flagged.

It needs at least :data:`MIN_SLIDES` training slides. Only numbers go into the summary, no slide ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from histokd.errors import ModelError

MIN_SLIDES = 4
QUANTILE = 0.99
SIGMA_FLOOR = 0.1  # x the median sigma
MEASURE = "rms_z_of_slide_mean_features"


def slide_descriptor(features: np.ndarray) -> np.ndarray:
    """``[N, D]`` tile features -> ``[D]`` float64 mean (the slide's descriptor)."""
    f = np.asarray(features, np.float64)
    return f.mean(axis=0)


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    floor = max(SIGMA_FLOOR * float(np.median(sd)), 1e-6)
    return mu, np.maximum(sd, floor)


def _score(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    z = (np.atleast_2d(x) - mu) / sd
    return np.sqrt(np.mean(z * z, axis=1))


def fit_ood(descriptors: Sequence[np.ndarray]) -> dict[str, Any] | None:
    """The summary of the training slides' descriptors (``[D]`` each), or None with fewer than
    :data:`MIN_SLIDES` slides. JSON-ready: ``measure``, ``n_slides``, ``dim``, ``mean``, ``std``,
    ``threshold``, ``quantile``, ``train_scores`` (min / median / max of the leave-one-out scores)."""
    x = np.stack([np.asarray(d, np.float64) for d in descriptors]) if len(descriptors) else np.zeros((0, 0))
    n = len(x)
    if n < MIN_SLIDES:
        return None
    mu, sd = _stats(x)
    loo = np.array([_score(x[i], *_stats(np.delete(x, i, axis=0)))[0] for i in range(n)])
    return {
        "measure": MEASURE,
        "n_slides": int(n),
        "dim": int(x.shape[1]),
        "mean": [float(v) for v in mu],
        "std": [float(v) for v in sd],
        "quantile": QUANTILE,
        "threshold": float(np.quantile(loo, QUANTILE)),
        "train_scores": {"min": float(loo.min()), "median": float(np.median(loo)), "max": float(loo.max())},
    }


def ood_score(summary: dict[str, Any], descriptor: np.ndarray, where: object = "bundle.json") -> tuple[float, bool]:
    """(score, flagged) of one slide's descriptor ``[D]`` against a summary from :func:`fit_ood`."""
    try:
        mu = np.asarray(summary["mean"], np.float64)
        sd = np.asarray(summary["std"], np.float64)
        thr = float(summary["threshold"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{where}: the ood summary is damaged (needs mean, std, threshold); retrain the model "
                         f"with `histokd train` or export it again") from None
    d = np.asarray(descriptor, np.float64)
    if d.shape != mu.shape or sd.shape != mu.shape:
        raise ModelError(f"{where}: the ood summary is {mu.shape[0]}-d but the slide's features are {d.shape[-1]}-d; "
                         f"embed the slides with the model's own encoder")
    score = float(_score(d, mu, sd)[0])
    return score, bool(score > thr)
