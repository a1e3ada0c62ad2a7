"""Deep-zoom (DZI) pyramid geometry and slide tiles, read through :func:`histokd.slides.reader.open_slide`.

The layout is OpenSlide's ``DeepZoomGenerator`` / Microsoft's Deep Zoom: level ``L`` of ``0..max_level``
(``max_level = ceil(log2(max(W, H)))``) is the slide shrunk by ``2 ** (max_level - L)`` (level-0 px per
level px), ``ceil`` of each side; it is cut into ``tile_size`` px tiles, each grown by ``overlap`` px on the
sides that have a neighbour. Pixel ``i`` of a level covers level-0 ``[i * f, (i + 1) * f)``: overlays sample
their rasters at the centre of that span, so slide and overlay tiles line up at every level.

``top`` caps the deepest level (a static export with ``--max-level``): the pyramid then describes the slide
at ``2 ** (max_level - top)`` level-0 px per pixel and :attr:`DeepZoom.base_scale` says so.
"""

from __future__ import annotations

import io
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

TILE_SIZE = 254
OVERLAP = 1
_TILE_NAME = re.compile(r"^(\d{1,7})_(\d{1,7})\.(jpeg|png)$")


@dataclass(frozen=True)
class DeepZoom:
    """The pyramid of a (W, H) level-0 image; levels ``0..top``."""

    width: int
    height: int
    tile_size: int = TILE_SIZE
    overlap: int = OVERLAP
    top: int | None = None  # deepest level served (default: the full-resolution one)

    @property
    def max_level(self) -> int:
        return max(0, math.ceil(math.log2(max(self.width, self.height, 1))))

    @property
    def top_level(self) -> int:
        return self.max_level if self.top is None else max(0, min(self.top, self.max_level))

    @property
    def base_scale(self) -> float:
        """Level-0 px per pixel of the deepest level served."""
        return self.scale(self.top_level)

    def scale(self, level: int) -> float:
        """Level-0 px per pixel of ``level``."""
        return float(2 ** (self.max_level - level))

    def level_size(self, level: int) -> tuple[int, int]:
        f = self.scale(level)
        return max(1, math.ceil(self.width / f)), max(1, math.ceil(self.height / f))

    def tile_count(self, level: int) -> tuple[int, int]:
        w, h = self.level_size(level)
        return math.ceil(w / self.tile_size), math.ceil(h / self.tile_size)

    def n_tiles(self) -> int:
        return sum(c * r for c, r in (self.tile_count(lv) for lv in range(self.top_level + 1)))

    def valid(self, level: int, col: int, row: int) -> bool:
        if not 0 <= level <= self.top_level:
            return False
        cols, rows = self.tile_count(level)
        return 0 <= col < cols and 0 <= row < rows

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """(x, y, w, h) of a tile in ``level`` px, overlap included."""
        lw, lh = self.level_size(level)
        ts, ov = self.tile_size, self.overlap
        x0 = col * ts - (ov if col > 0 else 0)
        y0 = row * ts - (ov if row > 0 else 0)
        x1 = min((col + 1) * ts + ov, lw)
        y1 = min((row + 1) * ts + ov, lh)
        return x0, y0, x1 - x0, y1 - y0

    def pixel_centres(self, level: int, col: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 (x, y) of the centres of a tile's pixel columns [w] and rows [h]."""
        x, y, w, h = self.tile_box(level, col, row)
        f = self.scale(level)
        return (x + np.arange(w) + 0.5) * f, (y + np.arange(h) + 0.5) * f

    def dzi_xml(self, fmt: str) -> str:
        """The ``.dzi`` descriptor of the pyramid served (levels ``0..top_level``)."""
        w, h = self.level_size(self.top_level)
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" '
                f'Overlap="{self.overlap}" TileSize="{self.tile_size}"><Size Width="{w}" Height="{h}"/></Image>\n')

    def describe(self) -> dict:
        """What the page needs to build an OpenSeadragon tile source for an overlay of the same pyramid."""
        w, h = self.level_size(self.top_level)
        return {"width": w, "height": h, "tile_size": self.tile_size, "overlap": self.overlap,
                "max_level": self.top_level, "base_scale": self.base_scale}


def parse_tile_name(name: str, fmt: str) -> tuple[int, int] | None:
    """``"<col>_<row>.<fmt>"`` -> (col, row); None for anything else."""
    m = _TILE_NAME.match(name)
    if m is None or m.group(3) != fmt:
        return None
    return int(m.group(1)), int(m.group(2))


class SlideTiles:
    """Deep-zoom tiles of one slide, opened on first use by ``opener`` (a :class:`histokd.slides.reader.Slide`
    factory). Reads are serialised per slide (backends are not all thread-safe); :meth:`close` waits for a read
    in progress, and a later read opens the slide again."""

    def __init__(self, opener: Callable[[], Any], top: int | None = None) -> None:
        self._opener = opener
        self._slide: Any = None
        self._lock = threading.Lock()
        w, h = self.slide.dimensions
        self.dz = DeepZoom(int(w), int(h), top=top)

    @property
    def slide(self) -> Any:
        with self._lock:
            if self._slide is None:
                self._slide = self._opener()
            return self._slide

    def close(self) -> None:
        with self._lock:
            if self._slide is not None:
                self._slide.close()
                self._slide = None

    def tile(self, level: int, col: int, row: int) -> np.ndarray:
        """RGB ``[h, w, 3]`` uint8 of a tile (the caller checked :meth:`DeepZoom.valid`)."""
        x, y, w, h = self.dz.tile_box(level, col, row)
        f = self.dz.scale(level)
        slide = self.slide
        with self._lock:
            if self._slide is not slide:  # closed meanwhile
                self._slide = slide = self._opener()
            # read_region_mpp reads the box from the best pyramid level and area-averages it to (w, h)
            return slide.read_region_mpp(x * f, y * f, (w, h), slide.mpp * f)

    def jpeg(self, level: int, col: int, row: int, quality: int = 85) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(self.tile(level, col, row)).save(buf, "JPEG", quality=quality)
        return buf.getvalue()
