"""Pseudo-masks: tile probabilities painted into a per-slide probability map at a working resolution.

A tile whose level-0 top-left is ``(x, y)`` covers level-0 pixels ``[x, x + patch_size_level0)`` ×
``[y, y + patch_size_level0)``. On a map with ``downsample`` level-0 px per map px (working mpp /
level-0 mpp), it covers map rows ``[y/ds, (y+ps)/ds)`` and columns ``[x/ds, (x+ps)/ds)``; a map pixel
takes the mean of the tiles that overlap it, weighted by the overlapped area (so overlapping tile grids
blend smoothly and half-covered border pixels are not over-weighted). Pixels no tile touches (no
tissue) are 0 and reported in ``covered``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histokd.classes import positive_class as positive_index  # the one rule; this name is kept for ifkd
from histokd.errors import FeatureError, InputError
from histokd.predictions import read_prediction


def _axis_weights(starts: np.ndarray, size: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For intervals ``[s, s + size)`` in map units: first index, last index (exclusive) per interval."""
    lo = np.floor(starts).astype(np.int64)
    hi = np.ceil(starts + size).astype(np.int64)
    return np.clip(lo, 0, n), np.clip(hi, 0, n), starts


def _overlap_1d(idx: np.ndarray, start: float, size: float) -> np.ndarray:
    """Length of the overlap between map pixels ``[i, i+1)`` and ``[start, start + size)``."""
    return np.clip(np.minimum(idx + 1, start + size) - np.maximum(idx, start), 0.0, 1.0)


def tile_map(
    values: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: float,
    shape: tuple[int, int],
    downsample: float | tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Paint per-tile ``values`` [N] at level-0 ``coords`` [N, 2] (x, y) into a map of ``shape`` (h, w).

    ``downsample``: level-0 px per map px, one number or ``(ds_x, ds_y)`` when the map's aspect ratio
    was rounded. Returns ``(map [h, w] float32, covered [h, w] bool)``.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(values) != len(coords):
        raise ValueError(f"{len(values)} values but {len(coords)} coords")
    dsx, dsy = (downsample, downsample) if np.isscalar(downsample) else downsample  # type: ignore[misc]
    h, w = shape
    acc = np.zeros((h, w), np.float64)
    wsum = np.zeros((h, w), np.float64)
    sx, sy = patch_size_level0 / float(dsx), patch_size_level0 / float(dsy)
    x0 = coords[:, 0] / float(dsx)
    y0 = coords[:, 1] / float(dsy)
    c_lo, c_hi, _ = _axis_weights(x0, sx, w)
    r_lo, r_hi, _ = _axis_weights(y0, sy, h)
    for i in range(len(values)):
        if c_hi[i] <= c_lo[i] or r_hi[i] <= r_lo[i]:
            continue
        wc = _overlap_1d(np.arange(c_lo[i], c_hi[i]), x0[i], sx)
        wr = _overlap_1d(np.arange(r_lo[i], r_hi[i]), y0[i], sy)
        a = np.outer(wr, wc)
        acc[r_lo[i] : r_hi[i], c_lo[i] : c_hi[i]] += a * values[i]
        wsum[r_lo[i] : r_hi[i], c_lo[i] : c_hi[i]] += a
    covered = wsum > 0
    out = np.zeros((h, w), np.float32)
    out[covered] = (acc[covered] / wsum[covered]).astype(np.float32)
    return out, covered


def tile_means(
    prob_map: np.ndarray, coords: np.ndarray, patch_size_level0: float, downsample: float | tuple[float, float]
) -> np.ndarray:
    """The reverse of :func:`tile_map`: mean of ``prob_map`` [h, w] over each tile's footprint -> [N]."""
    dsx, dsy = (downsample, downsample) if np.isscalar(downsample) else downsample  # type: ignore[misc]
    h, w = prob_map.shape
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    out = np.zeros(len(coords), np.float32)
    for i, (x, y) in enumerate(coords):
        c0, c1 = int(np.floor(x / dsx)), int(np.ceil((x + patch_size_level0) / dsx))
        r0, r1 = int(np.floor(y / dsy)), int(np.ceil((y + patch_size_level0) / dsy))
        patch = prob_map[max(r0, 0) : min(r1, h), max(c0, 0) : min(c1, w)]
        out[i] = float(patch.mean()) if patch.size else 0.0
    return out


@dataclass
class TileProbs:
    probs: np.ndarray  # [N] probability of the positive class
    coords: np.ndarray  # [N, 2] int64 level-0 (x, y)
    patch_size_level0: float
    classes: list[str]


def read_prediction_probs(path: str | os.PathLike[str]) -> TileProbs:
    """Positive-class tile probabilities of a predictions h5 (contract 7, read by :mod:`histokd.predictions`;
    the positive class is the one stored with the teacher)."""
    path = Path(path)
    if not path.exists():
        raise FeatureError(f"{path}: predictions not found; run `histokd label -w RUN --model ID` for the teacher")
    try:
        p = read_prediction(path)
    except InputError as e:
        raise FeatureError(f"{e}; delete it and re-run `histokd label` for the teacher") from None
    if not p.patch_size_level0:
        raise FeatureError(f"{path}: missing 'patch_size_level0' in predictions file; re-run `histokd label` for the teacher")
    col = p.positive if p.probs.shape[1] > 1 else 0
    return TileProbs(p.probs[:, col], p.coords, p.patch_size_level0, p.classes)
