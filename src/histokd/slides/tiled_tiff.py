"""Direct tile decoding for tiled TIFF slides (Aperio SVS, generic pyramidal TIFF): the same pixels, less overhead.

For a tiled TIFF level, OpenSlide's ``read_region`` spends about two thirds of its time outside JPEG
decoding (ARGB compositing into a cairo surface, the PIL round trip, un-premultiplying): on a 224-px tile
of a 256-px-tiled JPEG pyramid, about 0.9 ms per read against 0.36 ms of decoding (measured by
``benchmarks/embed.py``'s reader line). :class:`TiledTiffLevels` reads the compressed tiles of a level
itself (``os.pread``, so forked workers share nothing mutable), decodes each once with tifffile's codec
(imagecodecs: libjpeg-turbo, as OpenSlide), keeps the decoded tiles in a small LRU cache, and crops the
requested box out of them.

It is used only where it is known to give OpenSlide's pixels exactly:

- only levels that are a tiled, 8-bit, chunky RGB / YCbCr page of the file with the level's exact size and
  a codec in :data:`_CODECS`;
- and only after a check at open time: per level, one file tile read both ways must be equal to the last
  bit. A level that differs (another colour transform, a decoder that rounds otherwise) is left to the
  backend.

:func:`histokd.slides.reader.open_slide` attaches it to the OpenSlide backend under ``backend="auto"`` (the
default); an explicit ``backend="openslide"`` reads through OpenSlide alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from histokd.slides.integrity import quiet_tifffile

log = logging.getLogger("histokd")

# TIFF compression codes decoded here: none, LZW, JPEG, Adobe deflate, deflate, zstd, webp
_CODECS = {1, 5, 7, 8, 32946, 50000, 50001}
# decoded tiles kept per slide (bytes); a 256-px RGB tile is 192 KiB
CACHE_BYTES = 64 * 2**20


class _Level:
    """One pyramid level as a tiled page: tile size, grid, offsets and the page's decoder."""

    def __init__(self, page: Any) -> None:
        self.tw, self.th = int(page.tilewidth), int(page.tilelength)
        self.h, self.w = int(page.shape[0]), int(page.shape[1])
        self.cols = -(-self.w // self.tw)
        self.offsets = [int(o) for o in page.dataoffsets]
        self.counts = [int(c) for c in page.databytecounts]
        self.decode: Callable[..., Any] = page.decode
        self.tables = page.jpegtables
        self.header = getattr(page, "jpegheader", None)


class TiledTiffLevels:
    """Reads boxes of the tiled-TIFF levels of one slide file by decoding its tiles directly."""

    def __init__(self, path: Path, levels: dict[int, _Level], cache_bytes: int = CACHE_BYTES) -> None:
        self.path = path
        self._levels = levels
        self._fd = os.open(str(path), os.O_RDONLY)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._max_bytes = int(cache_bytes)

    # -- opening ------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, level_dimensions: list[tuple[int, int]],
             reference: Callable[[int, int, int, int, int], np.ndarray]) -> TiledTiffLevels | None:
        """The direct reader for ``path``'s levels that qualify and pass the check against ``reference``
        (the backend's ``read(level, x, y, w, h)``), or None when no level does."""
        import tifffile

        try:
            with quiet_tifffile(), tifffile.TiffFile(str(path)) as tf:
                pages = [p for p in tf.pages if _qualifies(p)]
                found: dict[int, _Level] = {}
                for lvl, (w, h) in enumerate(level_dimensions):
                    page = next((p for p in pages if tuple(p.shape[:2]) == (h, w)), None)
                    if page is not None:
                        found[lvl] = _Level(page)
        except Exception as e:  # noqa: BLE001 - not a TIFF tifffile reads: the backend reads it alone
            log.debug("%s: no direct tile reader (%s)", path, e)
            return None
        if not found:
            return None
        reader = cls(path, found)
        for lvl in list(found):
            if not reader._agrees(lvl, reference):
                del found[lvl]
        if not found:
            reader.close()
            return None
        return reader

    def _agrees(self, level: int, reference: Callable[[int, int, int, int, int], np.ndarray]) -> bool:
        """One file tile (the one at the level's centre) decoded here equals the backend's pixels."""
        lv = self._levels[level]
        x = (lv.w // 2) // lv.tw * lv.tw
        y = (lv.h // 2) // lv.th * lv.th
        w, h = min(lv.tw, lv.w - x), min(lv.th, lv.h - y)
        try:
            mine = self.read(level, x, y, w, h)
            ref = np.asarray(reference(level, x, y, w, h))[..., :3]
        except Exception as e:  # noqa: BLE001 - any failure here means: leave the level to the backend
            log.debug("%s: level %d not read directly (%s)", self.path, level, e)
            return False
        same = mine.shape == ref.shape and bool(np.array_equal(mine, ref))
        if not same:
            log.debug("%s: level %d decodes differently from the backend; read through the backend", self.path, level)
        return same

    # -- reading ------------------------------------------------------------------------------------
    def has(self, level: int) -> bool:
        return level in self._levels

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB ``[h, w, 3]`` uint8 of ``level`` at level coordinates; the box lies inside the level."""
        lv = self._levels[level]
        out = np.empty((h, w, 3), np.uint8)
        for ty in range(y // lv.th, (y + h - 1) // lv.th + 1):
            for tx in range(x // lv.tw, (x + w - 1) // lv.tw + 1):
                tile = self._tile(level, lv, ty * lv.cols + tx)
                ox, oy = tx * lv.tw, ty * lv.th
                x0, y0 = max(x, ox), max(y, oy)
                x1, y1 = min(x + w, ox + lv.tw, lv.w), min(y + h, oy + lv.th, lv.h)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        return out

    def _tile(self, level: int, lv: _Level, index: int) -> np.ndarray:
        key = (level, index)
        tile = self._cache.get(key)
        if tile is not None:
            self._cache.move_to_end(key)
            return tile
        count = lv.counts[index]
        if count == 0:  # a sparse tile holds no data: OpenSlide shows it transparent, composited to white
            tile = np.full((lv.th, lv.tw, 3), 255, np.uint8)
        else:
            data = os.pread(self._fd, count, lv.offsets[index])
            if len(data) != count:
                raise OSError(f"tile {index} of level {level} is cut short ({len(data)} of {count} bytes)")
            arr = lv.decode(data, index, jpegtables=lv.tables, jpegheader=lv.header)[0]
            tile = np.ascontiguousarray(np.asarray(arr).reshape(arr.shape[-3:]))
        self._cache[key] = tile
        self._cache_bytes += tile.nbytes
        while self._cache_bytes > self._max_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes
        return tile

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._cache.clear()

    def __del__(self) -> None:  # a slide dropped without close() must not leak its descriptor
        with contextlib.suppress(Exception):
            self.close()


def _qualifies(page: Any) -> bool:
    try:
        return bool(
            page.is_tiled
            and int(page.compression) in _CODECS
            and int(page.bitspersample) == 8
            and int(page.samplesperpixel) == 3  # no alpha: the backend composites that over white
            and (int(page.photometric) == 2 or (int(page.photometric) == 6 and int(page.compression) == 7))
            and int(page.planarconfig) == 1  # chunky
            and len(page.shape) == 3
            and int(getattr(page, "imagedepth", 1)) == 1
            and len(page.dataoffsets) == len(page.databytecounts)
        )
    except Exception:  # noqa: BLE001 - an odd page: not read directly
        return False
