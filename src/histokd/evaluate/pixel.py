"""Pixel-level segmentation metrics and lesion-level FROC.

Every function takes 2-D arrays of one slide (or image) at the same geometry: a predicted probability
map or binary mask ``[H, W]`` and a ground-truth binary mask ``[H, W]``. Distances are in pixels of
that geometry unless ``spacing`` (µm/px) is given, in which case they are in µm.

Conventions (stated because the literature differs):

* Dice and IoU of an empty prediction against an empty ground truth are 1 (nothing to find, nothing
  found); of a non-empty prediction against an empty ground truth, 0.
* Hausdorff distance is between the *sets* of foreground pixels (symmetric, max of the two directed
  distances); 0 when both are empty, ``inf`` when exactly one is empty.
* FROC follows Camelyon16: lesions are connected components of the ground truth; a detection is a
  point with a score; a detection inside a lesion is a true positive for that lesion (a lesion counts
  once, with the highest score of the detections that hit it), a detection outside every lesion is a
  false positive. Sensitivity at ``r`` false positives per slide is the highest sensitivity reached
  at an operating point with at most ``r`` FPs per slide on average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from histokd.evaluate.metrics import roc_auc

FROC_FP_RATES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"maps must be 2-D and of the same shape, got {a.shape} and {b.shape}")


def confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` pixel counts of binary ``pred`` [H, W] against binary ``gt`` [H, W]."""
    _check_pair(pred, gt)
    p = np.asarray(pred, dtype=bool)
    g = np.asarray(gt, dtype=bool)
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    tn = int(p.size - tp - fp - fn)
    return tp, fp, fn, tn


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice = 2|P∩G| / (|P| + |G|) of binary masks [H, W]; 1.0 when both are empty."""
    tp, fp, fn, _ = confusion(pred, gt)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union (Jaccard) of binary masks [H, W]; 1.0 when both are empty."""
    tp, fp, fn, _ = confusion(pred, gt)
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def pixel_auc(prob: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """ROC AUC of probabilities [H, W] against binary ``gt``; NaN when only one class is present.

    ``valid`` [H, W] bool restricts the pixels counted (e.g. tissue only).
    """
    _check_pair(prob, gt)
    p = np.asarray(prob, dtype=np.float64)
    g = np.asarray(gt, dtype=bool)
    if valid is not None:
        p, g = p[valid], g[valid]
    p, g = p.ravel(), g.ravel()
    if g.all() or not g.any():
        return float("nan")
    return roc_auc(g, p)


def hausdorff(pred: np.ndarray, gt: np.ndarray, spacing: float = 1.0) -> float:
    """Symmetric Hausdorff distance between the foreground pixel sets of ``pred`` and ``gt`` [H, W].

    ``max(max_{p∈P} d(p, G), max_{g∈G} d(g, P))`` with Euclidean pixel distances times ``spacing``
    (µm/px, or 1 for pixels). Computed with exact Euclidean distance transforms, O(H·W).
    """
    _check_pair(pred, gt)
    p = np.asarray(pred, dtype=bool)
    g = np.asarray(gt, dtype=bool)
    if not p.any() and not g.any():
        return 0.0
    if not p.any() or not g.any():
        return float("inf")
    # distance_transform_edt gives, for every non-zero pixel, the distance to the nearest zero pixel:
    # on ~G that is the distance to the nearest G pixel.
    d_to_g = ndimage.distance_transform_edt(~g)
    d_to_p = ndimage.distance_transform_edt(~p)
    return float(max(d_to_g[p].max(), d_to_p[g].max()) * spacing)


def segmentation_scores(
    prob: np.ndarray, gt: np.ndarray, threshold: float = 0.5, spacing: float = 1.0
) -> dict[str, float]:
    """Dice, IoU, pixel AUC and Hausdorff of one map [H, W] (probabilities in [0, 1]) against ``gt``."""
    pred = np.asarray(prob) >= threshold
    return {
        "dice": dice(pred, gt),
        "iou": iou(pred, gt),
        "pixel_auc": pixel_auc(prob, gt),
        "hausdorff": hausdorff(pred, gt, spacing),
    }


def summarise_slides(
    probs: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    threshold: float = 0.5,
    spacings: Sequence[float] | None = None,
) -> dict[str, float]:
    """Cohort summary over slides (all at their own geometry).

    Returns ``dice_mean`` / ``iou_mean`` / ``hausdorff_mean`` (per-slide means over slides whose GT has
    tumour; Hausdorff over slides where it is finite), ``dice_global`` / ``iou_global`` (pixels pooled
    over every slide, so false positives on tumour-free slides count), ``pixel_auc`` (pooled),
    ``specificity_neg`` (fraction of pixels predicted negative on slides without tumour) and counts.
    """
    if len(probs) != len(gts):
        raise ValueError("probs and gts differ in length")
    spacings = list(spacings) if spacings is not None else [1.0] * len(probs)
    tp = fp = fn = 0
    dices, ious, hds = [], [], []
    neg_px = neg_pred = 0
    all_p, all_g = [], []
    for prob, gt, sp in zip(probs, gts, spacings, strict=True):
        gt = np.asarray(gt, dtype=bool)
        pred = np.asarray(prob) >= threshold
        a, b, c, _ = confusion(pred, gt)
        tp, fp, fn = tp + a, fp + b, fn + c
        if gt.any():
            dices.append(dice(pred, gt))
            ious.append(iou(pred, gt))
            h = hausdorff(pred, gt, sp)
            if np.isfinite(h):
                hds.append(h)
        else:
            neg_px += gt.size
            neg_pred += int(pred.sum())
        # subsample pooled pixels for AUC so that large cohorts stay cheap; deterministic stride
        stride = max(1, gt.size // 200_000)
        all_p.append(np.asarray(prob, dtype=np.float32).ravel()[::stride])
        all_g.append(gt.ravel()[::stride])
    pooled_p = np.concatenate(all_p) if all_p else np.zeros(0, np.float32)
    pooled_g = np.concatenate(all_g) if all_g else np.zeros(0, bool)
    auc = float("nan")
    if pooled_g.any() and not pooled_g.all():
        auc = roc_auc(pooled_g, pooled_p)
    nan = float("nan")
    return {
        "dice_mean": float(np.mean(dices)) if dices else nan,
        "iou_mean": float(np.mean(ious)) if ious else nan,
        "hausdorff_mean": float(np.mean(hds)) if hds else nan,
        "dice_global": 1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
        "iou_global": 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn),
        "pixel_auc": auc,
        "specificity_neg": 1.0 - neg_pred / neg_px if neg_px else nan,
        "n_slides": float(len(probs)),
        "n_slides_with_tumour": float(len(dices)),
    }


# --------------------------------------------------------------------------------------------- FROC


@dataclass
class Detection:
    """One lesion candidate: pixel position (row, col) in the map's geometry and a score in [0, 1]."""

    row: int
    col: int
    score: float


def detect_lesions(
    prob: np.ndarray, threshold: float = 0.5, mode: str = "components", min_distance: int = 3
) -> list[Detection]:
    """Lesion candidates from a probability map [H, W].

    ``mode="components"``: one detection per connected component of ``prob >= threshold``, placed at
    the component's maximum, scored by that maximum. ``mode="maxima"``: local maxima at least
    ``min_distance`` px apart with ``prob >= threshold`` (the Camelyon16 reference detector's idea).
    """
    prob = np.asarray(prob, dtype=np.float32)
    if mode == "components":
        labels, n = ndimage.label(prob >= threshold, structure=np.ones((3, 3)))
        if n == 0:
            return []
        idx = ndimage.maximum_position(prob, labels, index=np.arange(1, n + 1))
        return [Detection(int(r), int(c), float(prob[r, c])) for r, c in idx]
    if mode == "maxima":
        from skimage.feature import peak_local_max

        peaks = peak_local_max(prob, min_distance=min_distance, threshold_abs=threshold, exclude_border=False)
        return [Detection(int(r), int(c), float(prob[r, c])) for r, c in peaks]
    raise ValueError(f"unknown detection mode {mode!r}; use 'components' or 'maxima'")


@dataclass
class FROCResult:
    fps_per_slide: np.ndarray  # [K] average false positives per slide at each operating point
    sensitivity: np.ndarray  # [K] lesion sensitivity at each operating point
    thresholds: np.ndarray  # [K] score thresholds (descending)
    sensitivity_at: dict[float, float] = field(default_factory=dict)  # FP rate -> sensitivity
    score: float = float("nan")  # mean of sensitivity_at (the Camelyon16 FROC score)
    n_lesions: int = 0
    n_slides: int = 0


def froc(
    detections: Sequence[Sequence[Detection]],
    gts: Sequence[np.ndarray],
    fp_rates: Sequence[float] = FROC_FP_RATES,
    min_lesion_px: int = 0,
) -> FROCResult:
    """Camelyon16-style FROC over slides.

    ``detections[i]`` are the candidates of slide ``i``; ``gts[i]`` its GT mask [H, W] in the same
    geometry. Lesions smaller than ``min_lesion_px`` pixels are dropped from the lesion count, and
    detections inside them are neither TP nor FP (as Camelyon16 does for isolated tumour cells).
    """
    if len(detections) != len(gts):
        raise ValueError("detections and gts differ in length")
    lesion_scores: list[float] = []  # best hit score per lesion (-inf when missed)
    fp_scores: list[float] = []
    for dets, gt in zip(detections, gts, strict=True):
        labels, n = ndimage.label(np.asarray(gt, dtype=bool), structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        best = np.full(n + 1, -np.inf)
        for d in dets:
            lab = labels[d.row, d.col] if 0 <= d.row < labels.shape[0] and 0 <= d.col < labels.shape[1] else 0
            if lab == 0:
                fp_scores.append(d.score)
            elif sizes[lab] >= min_lesion_px:
                best[lab] = max(best[lab], d.score)
        keep = [k for k in range(1, n + 1) if sizes[k] >= min_lesion_px]
        lesion_scores.extend(best[keep].tolist())
    n_slides = len(gts)
    n_lesions = len(lesion_scores)
    les = np.asarray(lesion_scores, dtype=np.float64)
    fps = np.asarray(fp_scores, dtype=np.float64)
    cand = np.concatenate([les[np.isfinite(les)], fps])
    thresholds = np.unique(cand)[::-1] if cand.size else np.zeros(0)
    sens = np.array([(les >= t).sum() / n_lesions if n_lesions else np.nan for t in thresholds])
    fpr = np.array([(fps >= t).sum() / max(n_slides, 1) for t in thresholds])
    # the operating point "detect nothing": 0 FP, 0 sensitivity
    thresholds = np.concatenate([[np.inf], thresholds])
    sens = np.concatenate([[0.0 if n_lesions else np.nan], sens])
    fpr = np.concatenate([[0.0], fpr])
    at: dict[float, float] = {}
    for r in fp_rates:
        ok = fpr <= r + 1e-12
        at[float(r)] = float(np.nanmax(sens[ok])) if n_lesions else float("nan")
    score = float(np.mean(list(at.values()))) if n_lesions else float("nan")
    return FROCResult(fpr, sens, thresholds, at, score, n_lesions, n_slides)
