"""The slide reader's backends (OpenSlide, tiffslide): pixels at a level in level coordinates, and the
level-0 µm/px from the file's properties; nothing else. :mod:`histokd.slides.reader` builds the
:class:`~histokd.slides.reader.Slide` on top of them and chooses between them."""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("histokd")

# µm/px values outside this range are metadata garbage (e.g. TIFF default 1 px/unit)
_MPP_RANGE = (0.01, 200.0)


class _Backend(ABC):
    name = "?"
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    channels: int
    properties: dict[str, Any]

    @abstractmethod
    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels ``[h, w, C]`` uint8 of ``level`` at level coordinates; the box lies inside the level."""
        ...

    @abstractmethod
    def mpp(self) -> float | None:
        ...

    @abstractmethod
    def close(self) -> None:
        ...


class _OpenSlideBackend(_Backend):
    name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self._osr = openslide.OpenSlide(str(path))
        self.level_dimensions = [tuple(map(int, d)) for d in self._osr.level_dimensions]
        self.level_downsamples = [float(d) for d in self._osr.level_downsamples]
        self.properties = dict(self._osr.properties)
        self.channels = 3

    def read_rgba(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        loc = (int(round(x * ds)), int(round(y * ds)))
        return np.asarray(self._osr.read_region(loc, level, (int(w), int(h))))

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        rgba = self.read_rgba(level, x, y, w, h)
        # OpenSlide returns un-premultiplied RGBA; transparent = no data -> composite over white
        if rgba[..., 3].min() == 255:  # opaque (the usual case): a view, the caller copies it into place
            return rgba[..., :3]
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)

    def mpp(self) -> float | None:
        return _mpp_from_props(self.properties, "openslide.mpp-x", "openslide.mpp-y")

    def close(self) -> None:
        self._osr.close()


class _TiffSlideBackend(_Backend):
    name = "tiffslide"

    def __init__(self, path: Path) -> None:
        import tiffslide

        self._ts = tiffslide.TiffSlide(str(path))
        self.level_dimensions = [tuple(map(int, d)) for d in self._ts.level_dimensions]
        self.level_downsamples = [float(d) for d in self._ts.level_downsamples]
        self.properties = dict(self._ts.properties)
        axes = self.properties.get("tiffslide.series-axes", "YXS")
        if axes == "YX":
            self.channels = 1
        else:
            probe = self._ts.read_region((0, 0), self.level_count - 1, (1, 1), as_array=True, padding=False)
            self.channels = int(probe.shape[-1])

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        # tiffslide maps level-0 -> level coordinates with a floor; ceil() lands exactly on (x, y)
        loc = (int(math.ceil(x * ds - 1e-6)), int(math.ceil(y * ds - 1e-6)))
        arr = self._ts.read_region(loc, level, (int(w), int(h)), as_array=True, padding=True)
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.dtype != np.uint8:
            arr = _to_uint8(arr)
        return arr

    def mpp(self) -> float | None:
        return _mpp_from_props(self.properties, "tiffslide.mpp-x", "tiffslide.mpp-y")

    def close(self) -> None:
        self._ts.close()


_BACKENDS: dict[str, type[_Backend]] = {"openslide": _OpenSlideBackend, "tiffslide": _TiffSlideBackend}


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a 16-bit / float image to uint8 (multiplex scanners often write uint16)."""
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return (arr.astype(np.float32) * (255.0 / info.max)).round().astype(np.uint8)
    return np.clip(arr.astype(np.float32) * 255.0, 0, 255).round().astype(np.uint8)


def _mpp_from_props(props: dict[str, Any], kx: str, ky: str) -> float | None:
    """Level-0 µm/px from backend properties, else from the TIFF resolution tags."""
    vals = []
    for k in (kx, ky):
        v = props.get(k)
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if _MPP_RANGE[0] <= f <= _MPP_RANGE[1]:
            vals.append(f)
    if not vals:
        vals = _mpp_from_tiff_tags(props)
    if not vals:
        return None
    if len(vals) == 2 and abs(vals[0] - vals[1]) > 0.01 * vals[0]:
        log.warning("anisotropic pixels (mpp-x %.4f, mpp-y %.4f); using mpp-x", vals[0], vals[1])
    return vals[0]


def _mpp_from_tiff_tags(props: dict[str, Any]) -> list[float]:
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    um_per_unit = {"centimeter": 1e4, "inch": 25400.0}.get(unit)
    if um_per_unit is None:  # unit NONE: resolution tags carry no physical size
        return []
    out = []
    for k in ("tiff.XResolution", "tiff.YResolution"):
        try:
            px_per_unit = float(props.get(k))
        except (TypeError, ValueError):
            continue
        if px_per_unit > 0:
            mpp = um_per_unit / px_per_unit
            if _MPP_RANGE[0] <= mpp <= _MPP_RANGE[1]:
                out.append(mpp)
    return out

