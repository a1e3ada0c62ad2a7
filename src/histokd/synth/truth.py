"""Ground-truth files of a synthetic slide: tumour mask PNG and QuPath-style GeoJSON polygons."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from shapely.geometry import Polygon, mapping
from skimage import measure

from histokd.workspace import atomic_path, write_text

TUMOUR_CLASS = {"name": "Tumor", "color": [200, 0, 0]}


def write_mask_png(path: str | os.PathLike[str], mask: np.ndarray) -> Path:
    """Write a bool mask [h, w] as an 8-bit greyscale PNG (0 = background, 255 = tumour)."""
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG", optimize=True)
    return Path(path)


def mask_polygons(mask: np.ndarray, downsample: float) -> list[Polygon]:
    """Polygons (level-0 px) of the True region of ``mask`` [h, w] whose pixel (i, j) covers level-0
    [j*ds, (j+1)*ds) x [i*ds, (i+1)*ds). Holes are kept (even-odd rule over the traced rings)."""
    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float32), 1)
    rings = []
    for c in measure.find_contours(padded, 0.5):
        if len(c) < 4:
            continue
        # contour coordinates are in padded pixel-centre units: centre of pixel i is level-0 (i + 0.5) * ds
        xy = np.stack([(c[:, 1] - 1 + 0.5) * downsample, (c[:, 0] - 1 + 0.5) * downsample], axis=1)
        poly = Polygon(xy).buffer(0)
        if not poly.is_empty and poly.area > 0:
            rings.append(poly)
    if not rings:
        return []
    geom = functools.reduce(lambda a, b: a.symmetric_difference(b), rings)
    parts = list(getattr(geom, "geoms", [geom]))
    return [p for p in parts if isinstance(p, Polygon) and p.area > 0]


def write_geojson(path: str | os.PathLike[str], polygons: list[Polygon],
                  properties: dict[str, Any] | None = None) -> Path:
    """Write polygons (level-0 px) as a GeoJSON FeatureCollection that QuPath imports as Tumor annotations."""
    feats = []
    for i, p in enumerate(polygons):
        props = {"objectType": "annotation", "classification": dict(TUMOUR_CLASS), "name": f"tumour_{i}"}
        props.update(properties or {})
        geom = mapping(p.simplify(0.5, preserve_topology=True))
        feats.append({"type": "Feature", "id": f"tumour_{i}", "geometry": _round(geom), "properties": props})
    return write_text(path, json.dumps({"type": "FeatureCollection", "features": feats}) + "\n")


def _round(geom: Any) -> Any:
    """Coordinates rounded to 0.1 px (shapely gives tuples of floats)."""
    if isinstance(geom, dict):
        return {k: _round(v) for k, v in geom.items()}
    if isinstance(geom, (list, tuple)):
        if geom and isinstance(geom[0], float):
            return [round(v, 1) for v in geom]
        return [_round(v) for v in geom]
    return geom
