"""Slide-sized binary masks (tumour ground truth, user tissue masks) and tile coverage.

A mask is a bool array ``[h, w]`` covering the whole slide plus its ``downsample`` = slide level-0
width / mask width: mask pixel ``(i, j)`` covers level-0 px ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)``.

Formats are a registry keyed by file suffix (``MASK_LOADERS``): PNG/other raster images and GeoJSON
here; ``histokd.slides.annotations`` adds ASAP / Camelyon XML when it is installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from histokd.errors import InputError
from histokd.registry import Registry
from histokd.slides.geojson import read_geojson_polygons

log = logging.getLogger("histokd")

MaskLoader = Callable[..., tuple[np.ndarray, float]]
#: suffix (".png", ".geojson", ...) -> loader(path, slide_dimensions, downsample=None, classes=None)
MASK_LOADERS: Registry[MaskLoader] = Registry("mask format")

# longest side (px) of a rasterised vector mask when no downsample is asked for
_DEFAULT_VECTOR_SIDE = 4096


def register_mask_loader(*suffixes: str) -> Callable[[MaskLoader], MaskLoader]:
    """Register ``fn(path, slide_dimensions, downsample=None, classes=None) -> (mask, downsample)``."""

    def deco(fn: MaskLoader) -> MaskLoader:
        for s in suffixes:
            MASK_LOADERS.register(s.lower())(fn)
        return fn

    return deco


def load_mask(
    path: str | os.PathLike[str],
    slide_dimensions: tuple[int, int],
    downsample: float | None = None,
    classes: Iterable[str] | None = None,
) -> tuple[np.ndarray, float]:
    """Load a whole-slide mask as ``(mask bool [h, w], downsample)``.

    Args:
        path: PNG (or any raster PIL reads) covering the whole slide at any downsample, or GeoJSON
            polygons in level-0 px (QuPath export), or a format registered by another module.
        slide_dimensions: level-0 (W, H) of the slide the mask belongs to.
        downsample: for vector masks, the level-0 px per mask px to rasterise at (default: the
            power of two that keeps the longer side <= 4096 px). Ignored for raster masks.
        classes: for vector masks, keep only annotations whose class name is in this set.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: mask file not found; fix the mask path in the cohort CSV")
    _load_plugins()
    suffix = path.suffix.lower()
    if suffix not in MASK_LOADERS:
        known = ", ".join(MASK_LOADERS.names())
        raise InputError(f"{path}: unsupported mask format {suffix!r}; give one of: {known}")
    W, H = int(slide_dimensions[0]), int(slide_dimensions[1])
    mask, ds = MASK_LOADERS.get(suffix)(path, (W, H), downsample=downsample, classes=classes)
    return mask.astype(bool, copy=False), float(ds)


def _load_plugins() -> None:
    """Let optional modules (ASAP XML in ``slides/annotations.py``) register their formats."""
    if ".xml" in MASK_LOADERS:
        return
    try:
        import histokd.slides.annotations  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "histokd.slides.annotations":
            raise


@register_mask_loader(".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
def _load_raster(path: Path, slide_dimensions: tuple[int, int], downsample: float | None = None,
                 classes: Iterable[str] | None = None) -> tuple[np.ndarray, float]:
    """Raster mask: non-zero pixels (any colour channel; alpha ignored) are in the mask."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except Exception as e:  # noqa: BLE001 - any PIL failure means an unreadable file
        raise InputError(f"{path}: cannot read mask image ({e}); re-export it as PNG") from e
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    mask = arr > 0
    W, H = slide_dimensions
    h, w = mask.shape
    ds = W / w
    # the mask must cover the whole slide with the same aspect (1 mask px of slack for rounding)
    if abs(h * ds - H) > ds + 1:
        raise InputError(
            f"{path}: mask is {w}x{h} px but the slide is {W}x{H} px (aspect differs); the mask must cover "
            f"the whole slide at one downsample"
        )
    return mask, ds


@register_mask_loader(".geojson", ".json")
def _load_geojson(path: Path, slide_dimensions: tuple[int, int], downsample: float | None = None,
                  classes: Iterable[str] | None = None) -> tuple[np.ndarray, float]:
    """GeoJSON polygons / multipolygons in level-0 px, holes respected, rasterised at ``downsample``.

    Coordinates are checked (:func:`histokd.slides.geojson.read_geojson_polygons`): malformed ones are
    one :class:`InputError` naming the file, never a traceback or a silently empty mask."""
    keep = None if classes is None else {str(c).lower() for c in classes}
    polygons = [(p.exterior, p.holes) for p in read_geojson_polygons(path)
                if keep is None or (_feature_class(p.properties) or "").lower() in keep]
    return rasterise_polygons(polygons, slide_dimensions, downsample), _downsample_or_default(
        slide_dimensions, downsample)


def _downsample_or_default(slide_dimensions: tuple[int, int], downsample: float | None) -> float:
    if downsample is not None:
        if downsample <= 0:
            raise InputError(f"mask downsample must be > 0 (got {downsample})")
        return float(downsample)
    side = max(slide_dimensions)
    return float(2 ** max(0, int(np.ceil(np.log2(side / _DEFAULT_VECTOR_SIDE)))))


def rasterise_polygons(
    polygons: Iterable[tuple[np.ndarray, list[np.ndarray]]],
    slide_dimensions: tuple[int, int],
    downsample: float | None = None,
) -> np.ndarray:
    """Rasterise ``(exterior [K, 2], holes [[K, 2]])`` polygons in level-0 (x, y) px into a bool mask.

    The mask is ``[ceil(H/ds), ceil(W/ds)]``; a mask pixel is set when its centre lies in a polygon.
    """
    from skimage.draw import polygon as draw_polygon

    ds = _downsample_or_default(slide_dimensions, downsample)
    W, H = slide_dimensions
    w, h = int(np.ceil(W / ds)), int(np.ceil(H / ds))
    mask = np.zeros((h, w), bool)
    for exterior, holes in polygons:
        for ring, value in [(exterior, True), *[(hole, False) for hole in holes]]:
            ring = np.asarray(ring, dtype=np.float64)
            if ring.ndim != 2 or len(ring) < 3:
                continue
            # pixel centre (j + 0.5) * ds in level-0 px <-> mask coordinate j
            rr, cc = draw_polygon(ring[:, 1] / ds - 0.5, ring[:, 0] / ds - 0.5, shape=(h, w))
            if value:
                mask[rr, cc] = True
            else:
                mask[rr, cc] = False
    return mask


def _feature_class(props: dict[str, Any] | None) -> str | None:
    if not props:
        return None
    c = props.get("classification")
    if isinstance(c, dict):
        c = c.get("name")
    if c is None or isinstance(c, (dict, list)):
        c = props.get("class") or props.get("label") or props.get("name")
    return None if c is None or isinstance(c, (dict, list)) else str(c)


def tile_fractions(
    mask: np.ndarray,
    downsample: float,
    coords: np.ndarray,
    patch_size_level0: float,
) -> np.ndarray:
    """Fraction ``[N]`` float32 of each tile covered by ``mask``.

    Args:
        mask: bool ``[h, w]``, one pixel = ``downsample`` level-0 px on a side.
        downsample: level-0 px per mask px.
        coords: ``[N, 2]`` level-0 top-left (x, y) of the tiles.
        patch_size_level0: tile side in level-0 px (may be fractional).

    The coverage is exact for the piecewise-constant mask: the summed-area table is interpolated
    bilinearly at the tile's fractional corners, so tiles that straddle mask pixels get the
    area-weighted fraction. Parts of a tile outside the mask's extent count as uncovered.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    m = np.asarray(mask, dtype=np.float64)
    h, w = m.shape
    sat = np.zeros((h + 1, w + 1), np.float64)
    sat[1:, 1:] = m.cumsum(0).cumsum(1)
    side = patch_size_level0 / downsample
    x0 = coords[:, 0] / downsample
    y0 = coords[:, 1] / downsample

    def F(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = np.clip(x, 0, w)
        y = np.clip(y, 0, h)
        ix = np.minimum(np.floor(x).astype(np.int64), w - 1)
        iy = np.minimum(np.floor(y).astype(np.int64), h - 1)
        fx, fy = x - ix, y - iy
        return (sat[iy, ix] * (1 - fx) * (1 - fy) + sat[iy, ix + 1] * fx * (1 - fy)
                + sat[iy + 1, ix] * (1 - fx) * fy + sat[iy + 1, ix + 1] * fx * fy)

    area = F(x0 + side, y0 + side) - F(x0, y0 + side) - F(x0 + side, y0) + F(x0, y0)
    return np.clip(area / (side * side), 0.0, 1.0).astype(np.float32)
