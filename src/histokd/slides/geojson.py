"""Reading polygons out of a GeoJSON file, strictly: one parser for masks and annotations.

A GeoJSON annotation file (QuPath export, or hand-written) is a FeatureCollection, a Feature, a bare
geometry, or a JSON list of Features (QuPath 0.2). Coordinates are level-0 px ``(x, y)``. What a mask
needs are the Polygon / MultiPolygon geometries (also inside a GeometryCollection); points and lines
have no area and are left out, and so are rings of fewer than 3 positions or of zero area.

Malformed coordinates are refused, never guessed at (issue 16): a flat list (``[[x, y], ...]`` where a
Polygon needs ``[[[x, y], ...]]``, or ``[x, y, x, y]``), strings, booleans, NaN / infinity, or values no
slide could have raise :class:`~histokd.errors.InputError` naming the file, the feature and the fix. A
file that holds features but not one polygon with an area is refused too: read as a tumour mask, it
would silently give its slide an all-negative ground truth. An empty FeatureCollection (nothing
annotated) is an empty list.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from histokd.errors import InputError, one_line

log = logging.getLogger("histokd")

#: |coordinate| in level-0 px above which a value is garbage: the largest slides are ~2e5 px wide
MAX_COORDINATE = 1e8

_AREAL = {"Polygon", "MultiPolygon"}
_GEOMETRIES = {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection"}
_FIX = ("fix the file or export the annotations again from QuPath (a GeoJSON Polygon is "
        "[[[x, y], ...], ...] in level-0 px)")


class GeoJSONPolygon(NamedTuple):
    """One polygon of a GeoJSON file: rings in level-0 px and the properties of its feature."""

    exterior: np.ndarray  # [K, 2] float64 (x, y), K >= 3
    holes: list[np.ndarray]  # each [K, 2]
    properties: dict[str, Any]  # the feature's properties ({} for a bare geometry)
    feature: int  # index of the feature in the file (for grouping and messages)


class _Bad(Exception):
    """A malformed part of a GeoJSON file (message without the path)."""


def read_geojson_polygons(path: str | os.PathLike[str]) -> list[GeoJSONPolygon]:
    """Every Polygon / MultiPolygon of the GeoJSON file at ``path``, coordinates checked.

    Raises:
        InputError: unreadable or not JSON, not GeoJSON, malformed coordinates, or features but no
            polygon with an area; one line naming the file and the fix.
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"{path}: not a readable GeoJSON file ({type(e).__name__}: {one_line(e, 80)}); "
                         f"save it as UTF-8 JSON or export it again from QuPath") from None
    out: list[GeoJSONPolygon] = []
    skipped: Counter[str] = Counter()
    try:
        features = list(_features(obj))
        for i, (geom, props) in enumerate(features):
            out.extend(_polygons(geom, props, i, skipped))
    except _Bad as e:
        raise InputError(f"{path}: {e}; {_FIX}") from None
    except RecursionError:
        raise InputError(f"{path}: GeoJSON nested too deeply to be annotations; {_FIX}") from None
    if features and not out:
        what = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items()))
        raise InputError(f"{path}: no polygon with an area among {len(features)} feature(s) ({what}), so the mask "
                         f"would be empty; annotate regions as Polygon / MultiPolygon (QuPath: area annotations, "
                         f"not points or lines) or drop the mask from the cohort")
    if skipped:
        log.debug("%s: left out %s (no area)", path, dict(skipped))
    return out


def _features(obj: Any) -> list[tuple[Any, dict[str, Any]]]:
    """(geometry, properties) of every feature / bare geometry of a GeoJSON object."""
    if isinstance(obj, list):  # QuPath 0.2 writes a bare list of features
        return [f for item in obj for f in _features(item)]
    if not isinstance(obj, dict):
        raise _Bad(f"not GeoJSON (a JSON {type(obj).__name__}, not a FeatureCollection, Feature or geometry)")
    kind = obj.get("type")
    if kind == "FeatureCollection":
        feats = obj.get("features")
        if feats is None:
            return []
        if not isinstance(feats, list):
            raise _Bad(f"'features' of the FeatureCollection is a {type(feats).__name__}, not a list")
        return [f for item in feats for f in _features(item)]
    if kind == "Feature":
        props = obj.get("properties")
        return [(obj.get("geometry"), props if isinstance(props, dict) else {})]
    if kind in _GEOMETRIES:
        return [(obj, {})]
    raise _Bad(f"not GeoJSON (an object of type {_short(kind)}; expected FeatureCollection, Feature or a geometry)")


def _polygons(geom: Any, props: dict[str, Any], i: int, skipped: Counter[str]) -> list[GeoJSONPolygon]:
    if geom is None:  # a Feature without geometry is valid GeoJSON
        skipped["without geometry"] += 1
        return []
    if not isinstance(geom, dict):
        raise _Bad(f"feature {i}: geometry is a {type(geom).__name__}, not a GeoJSON geometry object")
    kind = geom.get("type")
    if kind == "GeometryCollection":
        parts = geom.get("geometries")
        if not isinstance(parts, list):
            raise _Bad(f"feature {i}: GeometryCollection without a list of 'geometries'")
        return [p for g in parts for p in _polygons(g, props, i, skipped)]
    if kind not in _AREAL:
        skipped[str(kind) if isinstance(kind, str) else "unknown geometry"] += 1
        return []
    coords = geom.get("coordinates")
    where = f"feature {i} ({kind})"
    polys = [coords] if kind == "Polygon" else _list(coords, where, "a list of polygons")
    out = []
    for rings in polys:
        parsed = _rings(rings, where, kind)
        if not parsed:
            skipped["empty or degenerate polygons"] += 1
            continue
        out.append(GeoJSONPolygon(parsed[0], parsed[1:], props, i))
    return out


def _rings(rings: Any, where: str, kind: str) -> list[np.ndarray]:
    """A Polygon's rings as [K, 2] arrays: exterior first; [] when the exterior has no area (fewer than 3
    positions, or collinear). Holes without an area are dropped."""
    rings = _list(rings, where, "a list of rings")
    if rings and _is_number(rings[0]):
        raise _Bad(f"{where}: coordinates are a flat list of numbers; a {kind} needs rings of [x, y] positions")
    if rings and isinstance(rings[0], list) and rings[0] and _is_number(rings[0][0]):
        raise _Bad(f"{where}: coordinates are one level too flat ([[x, y], ...]); a {kind} is a list of rings "
                   f"([[[x, y], ...]])")
    out = []
    for k, ring in enumerate(rings):
        xy = _positions(ring, where)
        if len(xy) >= 3 and _area(xy) > 0:
            out.append(xy)
        elif k == 0:
            return []
    return out


def _area(xy: np.ndarray) -> float:
    """Unsigned shoelace area of a ring [K, 2] (0 for collinear or repeated points)."""
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _positions(ring: Any, where: str) -> np.ndarray:
    ring = _list(ring, where, "a ring (a list of [x, y] positions)")
    xy = np.empty((len(ring), 2), np.float64)
    for j, p in enumerate(ring):
        if not isinstance(p, list) or len(p) < 2:
            raise _Bad(f"{where}: position {_short(p)} is not [x, y]")
        for d in range(2):
            xy[j, d] = _coordinate(p[d], where)
    return xy


def _coordinate(v: Any, where: str) -> float:
    if not _is_number(v):
        raise _Bad(f"{where}: coordinate {_short(v)} is not a number")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise _Bad(f"{where}: coordinate {_short(v)} is not a finite number")
    if abs(f) > MAX_COORDINATE:
        raise _Bad(f"{where}: coordinate {_short(v)} lies outside any slide (level-0 px expected)")
    return f


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _list(v: Any, where: str, what: str) -> list:
    if not isinstance(v, list):
        raise _Bad(f"{where}: coordinates hold {_short(v)} where {what} is expected")
    return v


def _short(v: Any) -> str:
    return one_line(repr(v), 40)
