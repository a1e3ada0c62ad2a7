"""How far a slide lies from the training slides: an out-of-distribution (OOD) score and flag.

The measure (stored with a model, in its ``bundle.json``; documented in ``docs/predict.md``) is applied to a
short *descriptor* per slide; a bundle keeps two: the mean of the slide's tile features ``[D]``, and the
colour of its tissue (:func:`histokd.slides.stain_stats.tissue_colour_descriptor`, ``[12]``). For each:

* the training slides' descriptors are summarised by their per-dimension mean ``mu`` and standard deviation
  ``sigma`` (``sigma`` floored at ``0.1 x`` its median over the dimensions, so that a dimension that is
  nearly constant on the training slides does not dominate);
* the score of a slide is the root-mean-square z-score of its descriptor, ``sqrt(mean(((x - mu) / sigma)^2))``:
  about 1 for a typical training slide, large for a slide unlike every training slide (another stain,
  another tissue, a scanner artefact);
* the threshold comes from the training slides' *leave-one-out* scores (each slide scored against the summary
  of the others, so that no slide judges itself): the larger of their 99th percentile and their mean + 3
  standard deviations. With the tens of slides of a typical training set the 99th percentile is simply the
  largest score, which a new slide of the same source exceeds about once in n + 1 slides; mean + 3 sd is the
  one-sided Gaussian 99.9 % point of the same scores.

A slide is flagged when either of its scores is above its threshold. Each summary needs at least
:data:`MIN_SLIDES` training slides; only numbers go into it, no slide ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from histokd.errors import ModelError

MIN_SLIDES = 4
QUANTILE = 0.99
SIGMA_FLOOR = 0.1  # x the median sigma
MEASURE = "rms_z"


def slide_descriptor(features: np.ndarray) -> np.ndarray:
    """``[N, D]`` tile features -> ``[D]`` float64 mean (the slide's feature descriptor)."""
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
    ``threshold``, ``quantile``, ``train_scores`` (min / median / mean / sd / max of the leave-one-out
    scores)."""
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
        "threshold": float(max(np.quantile(loo, QUANTILE), loo.mean() + 3 * loo.std())),
        "train_scores": {"min": float(loo.min()), "median": float(np.median(loo)), "mean": float(loo.mean()),
                         "sd": float(loo.std()), "max": float(loo.max())},
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
