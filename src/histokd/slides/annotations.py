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
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.geometry.base import BaseGeometry

from histokd.errors import InputError, one_line
from histokd.registry import Registry
from histokd.slides.geojson import MAX_COORDINATE, read_geojson_polygons

log = logging.getLogger("histokd")

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
    ``properties.classification`` when a string, or ``properties.name``.

    Coordinates are checked by :func:`histokd.slides.geojson.read_geojson_polygons` (flat lists,
    strings, NaN, ... are one :class:`InputError`); one :class:`Annotation` per feature."""
    path = Path(path)
    by_feature: dict[int, list[Polygon]] = {}
    props: dict[int, dict[str, Any]] = {}
    for p in read_geojson_polygons(path):
        by_feature.setdefault(p.feature, []).append(Polygon(p.exterior, p.holes))
        props[p.feature] = p.properties
    out: list[Annotation] = []
    for i, polys in by_feature.items():
        try:
            g = _areal(polys[0] if len(polys) == 1 else MultiPolygon(polys))
        except (ValueError, TypeError, shapely.errors.GEOSException) as e:
            raise InputError(f"{path}: feature {i}: invalid polygon geometry ({one_line(e, 80)}); fix or re-export "
                             f"the annotation") from None
        if not g.is_empty:
            out.append(Annotation(g, _feature_class(props[i])))
    return out


def _feature_class(props: dict) -> str:
    cls = props.get("classification")
    if isinstance(cls, dict):
        cls = cls.get("name")
    if isinstance(cls, (str, int, float)) and not isinstance(cls, bool) and cls != "":
        return str(cls)
    name = props.get("name")
    return str(name) if isinstance(name, (str, int, float)) and not isinstance(name, bool) else ""


#: ASAP annotation types without an area
_ASAP_POINT_TYPES = frozenset({"dot", "pointset", "measurement"})
_ASAP_FIX = "export the annotations again from ASAP (or as QuPath GeoJSON)"


@ANNOTATION_READERS.register("asap")
def read_asap_xml(path: str | os.PathLike[str]) -> list[Annotation]:
    """Read ASAP / Camelyon16 XML (``<ASAP_Annotations><Annotations><Annotation PartOfGroup=...>
    <Coordinates><Coordinate Order X Y/>``). The name is the annotation's ``PartOfGroup`` (``_0``/``_1``/
    ``Tumor`` positive, ``_2``/``Exclusion`` exclusions). Polygon, Spline and Rectangle annotations are
    kept (spline control points are used as polygon vertices); Dot / PointSet have no area.

    Refused with one :class:`InputError` (never a silently empty ground truth): coordinates that are not
    finite numbers, and a file with annotations of which not one has the 3 coordinates of a polygon (an
    XML without ``<Coordinate>`` elements, or of another tool, e.g. Aperio ImageScope's ``<Vertex>``).
    A file with no annotation at all is an empty list (nothing annotated)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError, ValueError) as e:
        raise InputError(f"{path}: not a readable ASAP XML file ({one_line(e, 80)}); {_ASAP_FIX}") from None
    out: list[Annotation] = []
    empty: list[str] = []  # annotations with an area type but fewer than 3 coordinates or no area
    for ann in root.iter("Annotation"):
        if (ann.get("Type") or "Polygon").lower() in _ASAP_POINT_TYPES:
            continue
        pts = _asap_coordinates(path, ann)
        if len(pts) < 3:
            empty.append(f"{ann.get('Name')!r} ({len(pts)})")
            continue
        g = _areal(shapely.make_valid(Polygon(pts)))
        if g.is_empty:
            empty.append(f"{ann.get('Name')!r} (no area)")
            continue
        group = ann.get("PartOfGroup") or ann.get("Name") or ""
        out.append(Annotation(g, "" if group == "None" else group))
    if empty and not out:
        shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        vertex = " (<Vertex> elements: an Aperio ImageScope XML, which histokd does not read)" if any(
            True for _ in root.iter("Vertex")) else ""
        raise InputError(f"{path}: annotation(s) {shown} have no polygon: fewer than the 3 <Coordinate X= Y=/> "
                         f"elements of a polygon (counts in brackets) or no area{vertex}, so the mask would be "
                         f"empty; {_ASAP_FIX}")
    if empty:
        log.warning("%s: %d annotation(s) without a polygon left out: %s", path, len(empty),
                    ", ".join(empty[:5]))
    if not out and root.tag != "ASAP_Annotations" and not any(True for _ in root.iter("Annotation")):
        raise InputError(f"{path}: not an ASAP XML file (root element <{one_line(root.tag, 40)}>, no <Annotation>); "
                         f"{_ASAP_FIX}")
    return out


def _asap_coordinates(path: Path, ann: ET.Element) -> list[tuple[float, float]]:
    """The (x, y) level-0 px of one ASAP annotation, in ``Order``; InputError unless finite numbers."""
    pts = []
    for c in ann.iter("Coordinate"):
        try:
            order, x, y = (float(c.get("Order", len(pts))), float(c.get("X")), float(c.get("Y")))
        except (TypeError, ValueError):
            order = x = y = math.nan
        if not all(math.isfinite(v) for v in (order, x, y)) or max(abs(x), abs(y)) > MAX_COORDINATE:
            raise InputError(
                f"{path}: annotation {ann.get('Name')!r} has a coordinate without finite numeric X/Y "
                f"(X={one_line(c.get('X'), 20)!r}, Y={one_line(c.get('Y'), 20)!r}); fix the XML or {_ASAP_FIX}"
            )
        pts.append((order, x, y))
    pts.sort(key=lambda p: p[0])
    return [(x, y) for _, x, y in pts]


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
