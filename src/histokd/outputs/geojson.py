"""QuPath-compatible GeoJSON of tile predictions and merged tumour regions.

One FeatureCollection per slide, all coordinates in level-0 px:

* one ``objectType = "tile"`` Feature per tile: its square, ``classification`` = the most probable class,
  ``measurements = {"tumour_prob": p, "prob_<class>": ...}``;
* one ``objectType = "annotation"`` Feature per merged region: the union of the squares of the tiles
  whose positive-class probability is ``>= threshold`` (``shapely.unary_union``), classified ``Tumor``
  (QuPath's built-in class) with colour ``[200, 0, 0]`` and measurements ``n_tiles``, ``mean_prob``,
  ``max_prob``, ``area_px`` (level-0 px^2).

QuPath (0.3 and later) opens it with File > Import objects (or drag and drop).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import box

from histokd.classes import positive_class
from histokd.slides.annotations import CLASS_COLOURS, qupath_feature
from histokd.workspace import write_text

# Colours for classes beyond the named ones (matplotlib tab10, 0-255).
_PALETTE = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [148, 103, 189], [140, 86, 75],
            [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]]
_NEGATIVE_NAMES = {"normal", "benign", "negative", "healthy", "background"}


def qupath_class(name: str, is_positive: bool) -> tuple[str, list[int]]:
    """QuPath classification name and colour for a histokd class: the positive class becomes QuPath's
    built-in ``Tumor`` (so its tools and colours apply), normal-like classes ``Normal``."""
    if is_positive:
        return "Tumor", CLASS_COLOURS["Tumor"]
    if name.strip().lower() in _NEGATIVE_NAMES:
        return "Normal", CLASS_COLOURS["Normal"]
    return name, _PALETTE[sum(name.encode()) % len(_PALETTE)]


def tile_regions(
    coords: np.ndarray, patch_size_level0: float, scores: np.ndarray, threshold: float
) -> list[shapely.Polygon]:
    """Merged regions of the tiles with ``scores >= threshold``: ``coords`` [N, 2] level-0 top-left,
    ``scores`` [N]. Returns polygons (holes kept), largest first."""
    sel = np.flatnonzero(np.asarray(scores) >= threshold)
    if sel.size == 0:
        return []
    s = float(patch_size_level0)
    merged = shapely.unary_union([box(x, y, x + s, y + s) for x, y in np.asarray(coords)[sel].tolist()])
    polys = list(getattr(merged, "geoms", [merged]))
    return sorted((p for p in polys if not p.is_empty), key=lambda p: -p.area)


def prediction_geojson(
    coords: np.ndarray,
    patch_size_level0: float,
    probs: np.ndarray,
    classes: list[str],
    threshold: float = 0.5,
    slide_id: str | None = None,
    positive: int | None = None,
) -> dict:
    """FeatureCollection of tiles and merged regions for one slide.

    ``coords`` [N, 2] int level-0 top-left (x, y); ``patch_size_level0`` tile side in level-0 px;
    ``probs`` [N, C] class probabilities; ``classes`` the C class names; ``positive`` the index of the
    positive class stored with the model (default: :func:`histokd.classes.positive_class`); ``threshold``
    on the positive-class probability for the regions.
    """
    coords = np.asarray(coords)
    probs = np.asarray(probs, dtype=np.float64)
    pos = positive_class(classes) if positive is None else positive
    p_pos = probs[:, pos]
    s = float(patch_size_level0)
    qclasses = [qupath_class(str(c), i == pos) for i, c in enumerate(classes)]
    features = []
    arg = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    for (x, y), p_row, k in zip(coords.tolist(), probs, arg.tolist()):
        meas = {"tumour_prob": float(p_row[pos])}
        meas.update({f"prob_{c}": float(v) for c, v in zip(classes, p_row)})
        name, colour = qclasses[k]
        features.append(qupath_feature(box(x, y, x + s, y + s), "tile", name, colour, meas))
    for poly in tile_regions(coords, s, p_pos, threshold):
        inside = _tiles_in(poly, coords, s) & (p_pos >= threshold)
        meas = {
            "n_tiles": float(inside.sum()),
            "mean_prob": float(p_pos[inside].mean()) if inside.any() else 0.0,
            "max_prob": float(p_pos[inside].max()) if inside.any() else 0.0,
            "area_px": float(poly.area),
        }
        name, colour = qclasses[pos]
        features.append(qupath_feature(poly, "annotation", name, colour, meas, name="histokd region"))
    out: dict = {"type": "FeatureCollection", "features": features}
    if slide_id is not None:
        out["properties"] = {"slide_id": slide_id, "threshold": float(threshold), "classes": list(classes)}
    return out


def _tiles_in(poly: shapely.Polygon, coords: np.ndarray, s: float) -> np.ndarray:
    """[N] bool: tile centres inside ``poly``."""
    if len(coords) == 0:
        return np.zeros(0, bool)
    centres = shapely.points(coords[:, 0] + s / 2, coords[:, 1] + s / 2)
    return shapely.contains(poly, centres)


def write_geojson(path: str | os.PathLike[str], collection: dict) -> Path:
    """Write a FeatureCollection atomically (compact JSON: files of 10^5 tiles stay small)."""
    return write_text(path, json.dumps(collection, separators=(",", ":")) + "\n")
