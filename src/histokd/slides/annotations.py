"""Polygon annotations in and out: QuPath GeoJSON, ASAP / Camelyon16 XML, binary masks.

All geometry is in **level-0 pixels** of the slide (x to the right, y down), as QuPath and ASAP store it.
A mask is a bool array ``[h, w]`` covering the whole slide at a ``downsample`` (level-0 px per mask px):
mask pixel ``(r, c)`` covers level-0 ``[c*d, (c+1)*d) x [r*d, (r+1)*d)`` and is "in" when its centre
``((c+0.5)*d, (r+0.5)*d)`` lies inside the region. With that convention the round trip
polygons -> mask -> polygons -> mask is exact, because :func:`mask_to_geometry` traces the 0.5
iso-line of the mask, which runs between pixel centres.

Which annotations count as positive (tumour) and which are exclusions (holes cut out of the
positive regions, e.g. Camelyon16 group ``_2``) is decided by class / group name, see
:data:`EXCLUSION_NAMES` and :func:`read_annotations`.
"""

from __future__ import annotations

import functools
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

from histokd.errors import InputError
from histokd.registry import Registry

#: Class (QuPath) or group (ASAP) names whose polygons are cut out of the positive region.
#: Camelyon16 uses ``_2`` for normal islands inside tumour; QuPath users mark such areas ``Ignore*``.
EXCLUSION_NAMES = frozenset({"_2", "exclusion", "exclude", "ignore", "ignore*", "none_tumour", "normal"})

#: Default colours of the classes histokd writes (RGB 0-255); QuPath shows them as given.
CLASS_COLOURS: dict[str, list[int]] = {
    "Tumor": [200, 0, 0],
    "Normal": [0, 150, 0],
    "Exclusion": [100, 100, 100],
}


@dataclass
class Annotation:
    """One annotated area: a (Multi)Polygon in level-0 px and its class / group name ('' when none)."""

    geometry: BaseGeometry
    name: str = ""

    @property
    def is_exclusion(self) -> bool:
        return self.name.strip().lower() in EXCLUSION_NAMES


ANNOTATION_READERS: Registry[Callable[[Path], list[Annotation]]] = Registry("annotation format")


# ---------------------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------------------


@ANNOTATION_READERS.register("geojson")
def read_geojson(path: str | os.PathLike[str]) -> list[Annotation]:
    """Read QuPath / generic GeoJSON: a FeatureCollection, a Feature, a bare geometry, or a JSON list of
    Features (what QuPath 0.2 exports). Polygon and MultiPolygon (with holes) are kept; points and lines
    have no area and are skipped. The class is ``properties.classification.name`` (QuPath 0.3+),
    ``properties.classification`` when a string, or ``properties.name``."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable GeoJSON file ({e}); export it again from QuPath") from None
    out: list[Annotation] = []
    for feat in _iter_features(obj):
        geom = feat.get("geometry")
        if not geom or geom.get("type") not in {"Polygon", "MultiPolygon", "GeometryCollection"}:
            continue
        try:
            g = _areal(shape(geom))
        except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException) as e:
            raise InputError(f"{path}: invalid polygon geometry ({e}); fix or re-export the annotation") from None
        if g.is_empty:
            continue
        out.append(Annotation(g, _feature_class(feat.get("properties") or {})))
    return out


def _iter_features(obj: Any) -> Iterable[dict]:
    if isinstance(obj, list):
        for item in obj:
            yield from _iter_features(item)
    elif isinstance(obj, dict):
        kind = obj.get("type")
        if kind == "FeatureCollection":
            yield from _iter_features(obj.get("features") or [])
        elif kind == "Feature":
            yield obj
        elif kind in {"Polygon", "MultiPolygon", "GeometryCollection"}:
            yield {"type": "Feature", "geometry": obj, "properties": {}}


def _feature_class(props: dict) -> str:
    cls = props.get("classification")
    if isinstance(cls, dict):
        return str(cls.get("name") or "")
    if isinstance(cls, str):
        return cls
    return str(props.get("name") or "")


@ANNOTATION_READERS.register("asap")
def read_asap_xml(path: str | os.PathLike[str]) -> list[Annotation]:
    """Read ASAP / Camelyon16 XML (``<ASAP_Annotations><Annotations><Annotation PartOfGroup=...>
    <Coordinates><Coordinate Order X Y/>``). The name is the annotation's ``PartOfGroup`` (``_0``/``_1``/
    ``Tumor`` positive, ``_2``/``Exclusion`` exclusions). Polygon, Spline and Rectangle annotations are
    kept (spline control points are used as polygon vertices); Dot / PointSet have no area."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise InputError(f"{path}: not a readable ASAP XML file ({e}); export it again from ASAP") from None
    out: list[Annotation] = []
    for ann in root.iter("Annotation"):
        if (ann.get("Type") or "Polygon").lower() in {"dot", "pointset", "measurement"}:
            continue
        pts = []
        for c in ann.iter("Coordinate"):
            try:
                pts.append((float(c.get("Order", len(pts))), float(c.get("X")), float(c.get("Y"))))
            except (TypeError, ValueError):
                raise InputError(
                    f"{path}: annotation {ann.get('Name')!r} has a coordinate without numeric X/Y; fix the XML"
                ) from None
        pts.sort(key=lambda p: p[0])
        if len(pts) < 3:
            continue
        g = _areal(shapely.make_valid(Polygon([(x, y) for _, x, y in pts])))
        if g.is_empty:
            continue
        group = ann.get("PartOfGroup") or ann.get("Name") or ""
        out.append(Annotation(g, "" if group == "None" else group))
    return out


def _areal(g: BaseGeometry) -> BaseGeometry:
    """Keep only the areal part of ``g`` (make_valid can return lines next to polygons), made valid."""
    if not g.is_valid:
        g = shapely.make_valid(g)
    if isinstance(g, (Polygon, MultiPolygon)):
        return g
    polys = [p for p in getattr(g, "geoms", []) if isinstance(p, (Polygon, MultiPolygon))]
    return shapely.unary_union(polys) if polys else Polygon()


def annotation_format(path: str | os.PathLike[str]) -> str:
    """Registry name of the reader for ``path`` from its suffix (``.geojson``/``.json`` or ``.xml``)."""
    suffix = Path(path).suffix.lower()
    if suffix in {".geojson", ".json"}:
        return "geojson"
    if suffix == ".xml":
        return "asap"
    raise InputError(
        f"{path}: unknown annotation format {suffix!r}; use QuPath GeoJSON (.geojson/.json) or ASAP XML (.xml)"
    )


def read_annotations(path: str | os.PathLike[str]) -> list[Annotation]:
    """Read every polygon annotation of a GeoJSON or ASAP XML file (format from the suffix)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: annotation file not found; fix mask_path in the cohort CSV")
    return ANNOTATION_READERS.get(annotation_format(path))(path)


def annotations_to_geometry(
    annotations: Iterable[Annotation], positive: Collection[str] | None = None
) -> BaseGeometry:
    """Union of the positive annotations minus the union of the exclusions, in level-0 px.

    ``positive``: class / group names counted as positive (case-insensitive); ``None`` means every
    annotation that is not an exclusion (:data:`EXCLUSION_NAMES`).
    """
    wanted = None if positive is None else {p.lower() for p in positive}
    pos, neg = [], []
    for a in annotations:
        if a.is_exclusion:
            neg.append(a.geometry)
        elif wanted is None or a.name.lower() in wanted:
            pos.append(a.geometry)
    region = shapely.unary_union(pos) if pos else Polygon()
    if neg and not region.is_empty:
        region = region.difference(shapely.unary_union(neg))
    return _areal(region)


# ---------------------------------------------------------------------------------------------------------
# geometry <-> mask
# ---------------------------------------------------------------------------------------------------------


def default_downsample(slide_dimensions: tuple[int, int], max_side: int = 4096) -> float:
    """The smallest power-of-two downsample at which the whole-slide mask is at most ``max_side`` px."""
    d = 1.0
    while max(slide_dimensions) / d > max_side:
        d *= 2
    return d


def rasterize(geometry: BaseGeometry, slide_dimensions: tuple[int, int], downsample: float) -> np.ndarray:
    """Rasterise a (Multi)Polygon in level-0 px into a bool mask ``[ceil(H/d), ceil(W/d)]``.

    A pixel is set when its centre is inside (holes respected). Polygons of a union are disjoint, so each
    is drawn alone in its bounding box and OR-ed in: an island inside another polygon's hole survives.
    """
    from skimage.draw import polygon as draw_polygon

    w0, h0 = slide_dimensions
    shape_ = (int(np.ceil(h0 / downsample)), int(np.ceil(w0 / downsample)))
    mask = np.zeros(shape_, dtype=bool)
    for poly in _polygons(geometry):
        minx, miny, maxx, maxy = poly.bounds
        c0 = max(int(np.floor(minx / downsample)) - 1, 0)
        r0 = max(int(np.floor(miny / downsample)) - 1, 0)
        c1 = min(int(np.ceil(maxx / downsample)) + 1, shape_[1])
        r1 = min(int(np.ceil(maxy / downsample)) + 1, shape_[0])
        if c1 <= c0 or r1 <= r0:
            continue
        box = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        for k, ring in enumerate([poly.exterior, *poly.interiors]):
            xy = np.asarray(ring.coords, dtype=np.float64)
            # level-0 -> mask coordinates where pixel centres sit on integers
            cc = xy[:, 0] / downsample - 0.5 - c0
            rr = xy[:, 1] / downsample - 0.5 - r0
            r, c = draw_polygon(rr, cc, shape=box.shape)
            box[r, c] = k == 0
        mask[r0:r1, c0:c1] |= box
    return mask


def _polygons(g: BaseGeometry) -> list[Polygon]:
    if g.is_empty:
        return []
    if isinstance(g, Polygon):
        return [g]
    return [p for sub in getattr(g, "geoms", []) for p in _polygons(sub)]


def mask_to_geometry(mask: np.ndarray, downsample: float = 1.0, min_area: float = 0.0) -> BaseGeometry:
    """Trace a bool mask ``[h, w]`` (at ``downsample``) into a (Multi)Polygon in level-0 px, holes included.

    Contours are the 0.5 iso-lines of the zero-padded mask (``skimage.measure.find_contours``); nesting
    (outer ring, hole, island in a hole ...) is resolved by even-odd filling, i.e. the symmetric
    difference of the contour polygons. ``min_area`` (level-0 px^2) drops specks.
    """
    from skimage.measure import find_contours

    m = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    if not m.any():
        return Polygon()
    rings = []
    for contour in find_contours(m, 0.5):
        if len(contour) < 4:
            continue
        # (row, col) in padded mask px -> level-0 px; pixel centres of the mask are at (c+0.5)*d
        xy = np.column_stack([(contour[:, 1] - 1 + 0.5) * downsample, (contour[:, 0] - 1 + 0.5) * downsample])
        p = Polygon(xy)
        if not p.is_valid:
            p = _areal(p)
        if not p.is_empty:
            rings.append(p)
    if not rings:
        return Polygon()
    rings.sort(key=lambda p: -p.area)
    region = functools.reduce(lambda a, b: a.symmetric_difference(b), rings)
    region = _areal(region)
    if min_area > 0:
        region = _areal(shapely.unary_union([p for p in _polygons(region) if p.area >= min_area]))
    return region


def load_annotation_mask(
    path: str | os.PathLike[str],
    slide_dimensions: tuple[int, int],
    downsample: float | None = None,
    positive: Collection[str] | None = None,
) -> tuple[np.ndarray, float]:
    """Ground-truth mask from a GeoJSON or ASAP XML file: ``(mask bool [h, w], downsample)``.

    ``slide_dimensions`` = level-0 (W, H); ``downsample`` defaults to :func:`default_downsample`.
    """
    d = float(downsample) if downsample else default_downsample(slide_dimensions)
    geom = annotations_to_geometry(read_annotations(path), positive=positive)
    return rasterize(geom, slide_dimensions, d), d


# ---------------------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------------------


def qupath_feature(
    geometry: BaseGeometry,
    object_type: str = "annotation",
    classification: str | None = None,
    colour: list[int] | None = None,
    measurements: dict[str, float] | None = None,
    name: str | None = None,
) -> dict:
    """One QuPath-compatible GeoJSON Feature (QuPath 0.3+ layout: ``properties.objectType``,
    ``properties.classification = {"name", "color"}``, ``properties.measurements`` as a dict)."""
    props: dict[str, Any] = {"objectType": object_type, "isLocked": False}
    if classification:
        props["classification"] = {
            "name": classification,
            "color": list(colour or CLASS_COLOURS.get(classification, [255, 200, 0])),
        }
    if measurements:
        props["measurements"] = {k: float(v) for k, v in measurements.items()}
    if name:
        props["name"] = name
    return {"type": "Feature", "geometry": _rounded(mapping(geometry)), "properties": props}


def _rounded(geom: dict, ndigits: int = 2) -> dict:
    """Round coordinates to 1/100 px: smaller files, and JSON never sees numpy scalars."""

    def rnd(c: Any) -> Any:
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float, np.floating, np.integer)):
            return [round(float(v), ndigits) for v in c]
        return [rnd(x) for x in c]

    out = dict(geom)
    if "coordinates" in out:
        out["coordinates"] = rnd(out["coordinates"])
    return out


def geometry_to_geojson(
    geometry: BaseGeometry, classification: str = "Tumor", colour: list[int] | None = None
) -> dict:
    """A FeatureCollection with one annotation Feature per polygon of ``geometry`` (level-0 px)."""
    feats = [qupath_feature(p, "annotation", classification, colour) for p in _polygons(geometry)]
    return {"type": "FeatureCollection", "features": feats}


def mask_to_geojson(
    mask: np.ndarray, downsample: float = 1.0, classification: str = "Tumor", min_area: float = 0.0
) -> dict:
    """Mask ``[h, w]`` at ``downsample`` -> QuPath GeoJSON FeatureCollection of annotation polygons."""
    return geometry_to_geojson(mask_to_geometry(mask, downsample, min_area), classification)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks of the same shape (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# ---------------------------------------------------------------------------------------------------------
# registration with histokd.slides.masks.load_mask (the cohort's mask_path may be ASAP XML)
# ---------------------------------------------------------------------------------------------------------


def _load_xml_mask(
    path: Path,
    slide_dimensions: tuple[int, int],
    downsample: float | None = None,
    classes: Iterable[str] | None = None,
) -> tuple[np.ndarray, float]:
    """``load_mask`` plug-in for ASAP / Camelyon16 XML (exclusion groups cut out of the positives)."""
    return load_annotation_mask(path, slide_dimensions, downsample, positive=None if classes is None else list(classes))


def _register_mask_loaders() -> None:
    try:
        from histokd.slides.masks import MASK_LOADERS, register_mask_loader
    except ModuleNotFoundError as e:  # masks.py not installed: annotations still work on their own
        if e.name != "histokd.slides.masks":
            raise
        return
    if ".xml" not in MASK_LOADERS:
        register_mask_loader(".xml")(_load_xml_mask)


_register_mask_loaders()
