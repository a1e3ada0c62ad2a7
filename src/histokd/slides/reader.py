"""One :class:`Slide` interface over OpenSlide, with tiffslide as fallback.

``open_slide(path)`` returns a :class:`Slide` whatever the backend. Coordinates are level-0 pixels
``(x, y)``; sizes are ``(width, height)``; arrays are ``[h, w, C]`` uint8 (RGB for ``read_region``).

Backend choice (``backend="auto"``):

1. multi-channel (non-RGB) TIFFs, such as the paired multiplex slides, go to tiffslide: OpenSlide
   decodes them through libtiff's RGBA path and loses channels;
2. otherwise OpenSlide is tried first. Its levels are validated once at open time: a reduced level
   that reads all-zero / transparent where level 0 has pixels (SubIFD / OME pyramids on some
   OpenSlide builds) or a single-level view of a file that tiffslide sees as a pyramid makes us use
   tiffslide instead;
3. tiffslide is the fallback for formats OpenSlide refuses.

Every failure is a one-line :class:`~histokd.errors.SlideError` naming the file and the fix.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histokd.errors import SlideError, one_line
from histokd.slides.backends import (  # noqa: F401 - the backends, re-exported for their importers
    _MPP_RANGE,
    _BACKENDS,
    _Backend,
    _mpp_from_props,
    _mpp_from_tiff_tags,
    _OpenSlideBackend,
    _TiffSlideBackend,
    _to_uint8,
)
from histokd.slides.integrity import is_tiff, quiet_tifffile, tiff_damage
from histokd.slides.tiled_tiff import TiledTiffLevels
from histokd.workspace import expand_user

log = logging.getLogger("histokd")

# a level is "good enough" for a target mpp when its mpp is at most target * (1 + tolerance)
_LEVEL_TOLERANCE = 0.02
# output chunk (px) for whole-slide reads, to bound memory on large slides
_CHUNK = 2048
# side (px) of each probe read of the open-time tile check, and the fractions of a level it samples
_PROBE = 32
_SPREAD = (0.0, 0.5, 1.0)

_TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif", ".qptiff"}


def _fix_hint(path: Path) -> str:
    return "re-export or re-copy the file, or drop it from the cohort"


# --------------------------------------------------------------------------------------------------
# the Slide
# --------------------------------------------------------------------------------------------------
class Slide:
    """A whole-slide image, whatever the backend.

    Attributes: ``path``, ``backend`` ("openslide" | "tiffslide"), ``dimensions`` (W, H) of level 0,
    ``level_count``, ``level_dimensions`` [(W, H)], ``level_downsamples`` [float], ``mpp`` (level-0
    µm/px), ``channels`` (3 for RGB slides, C for multiplex), ``properties`` (backend metadata).
    """

    def __init__(self, path: Path, backend: _Backend, mpp: float, mpp_source: str = "metadata") -> None:
        self.path = path
        self.mpp_source: str = mpp_source  # "metadata" (the file's) or "given" (open_slide(mpp=...), no metadata)
        self._b = backend
        self.backend: str = backend.name
        self.level_dimensions: list[tuple[int, int]] = list(backend.level_dimensions)
        self.level_downsamples: list[float] = list(backend.level_downsamples)
        self.level_count: int = len(self.level_dimensions)
        self.dimensions: tuple[int, int] = self.level_dimensions[0]
        self.mpp: float = float(mpp)
        self.channels: int = backend.channels
        self.properties: dict[str, Any] = backend.properties
        # tiled-TIFF levels decoded directly (same pixels as the backend, checked at open), or None
        self._direct: TiledTiffLevels | None = None

    # -- basics -------------------------------------------------------------------------------------
    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        try:
            self._b.close()
        except Exception:  # noqa: BLE001 - closing a dead handle must not mask the real error
            pass

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({str(self.path)!r}, {w}x{h} px, {self.mpp:.4g} µm/px, {self.level_count} levels, {self.backend})"

    def level_mpp(self, level: int) -> float:
        """µm/px of ``level``."""
        return self.mpp * self.level_downsamples[level]

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """The coarsest level whose resolution is at least ``target_mpp`` (mpp <= target, 2% tolerance).

        Falls back to level 0 when the target is finer than the native resolution (then we upsample).
        """
        best = 0
        for lvl in range(self.level_count):
            if self.level_mpp(lvl) <= target_mpp * (1 + _LEVEL_TOLERANCE):
                if self.level_downsamples[lvl] >= self.level_downsamples[best]:
                    best = lvl
        return best

    # -- raw reads --------------------------------------------------------------------------------
    def _background(self) -> int:
        return 255 if self.channels == 3 else 0

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """``[h, w, C]`` of ``level`` at level coordinates; outside the slide is background."""
        lw, lh = self.level_dimensions[level]
        out = np.full((h, w, self.channels), self._background(), np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            direct = self._direct
            if direct is not None and direct.has(level):
                arr = direct.read(level, x0, y0, x1 - x0, y1 - y0)
            else:
                arr = self._b.read(level, x0, y0, x1 - x0, y1 - y0)
        except Exception as e:  # noqa: BLE001 - any decoder error means a damaged file
            raise SlideError(
                f"{self.path}: cannot read pixels at level {level} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'}); the file is corrupt or truncated; "
                f"{_fix_hint(self.path)}"
            ) from e
        out[y0 - y : y1 - y, x0 - x : x1 - x] = arr[: y1 - y0, : x1 - x0, : self.channels]
        return out

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB pixels ``[h, w, 3]`` uint8 of ``level``; ``location`` is the level-0 top-left (x, y)."""
        if not 0 <= level < self.level_count:
            raise SlideError(f"{self.path}: level {level} does not exist (0..{self.level_count - 1})")
        ds = self.level_downsamples[level]
        x, y = int(round(location[0] / ds)), int(round(location[1] / ds))
        return self._as_rgb(self._read_level(level, x, y, int(size[0]), int(size[1])))

    def _as_rgb(self, arr: np.ndarray) -> np.ndarray:
        c = arr.shape[-1]
        if c == 3:
            return arr
        if c == 1:
            return np.repeat(arr, 3, axis=-1)
        raise SlideError(
            f"{self.path}: slide has {c} channels, not RGB; read it with read_region_channels() "
            f"(paired multiplex slides) or give an RGB slide"
        )

    # -- reads at a target resolution -----------------------------------------------------------------
    def _read_box(self, x0: float, y0: float, ext_w: float, ext_h: float, out_w: int, out_h: int,
                  target_mpp: float) -> np.ndarray:
        """Native-channel pixels ``[out_h, out_w, C]`` of the level-0 box (x0, y0, ext_w, ext_h).

        The box is read from the best level for ``target_mpp`` and resized with area averaging
        (PIL BOX) when shrinking, bilinear when enlarging.
        """
        level = self.best_level_for_mpp(target_mpp)
        ds = self.level_downsamples[level]
        fx0, fy0, fx1, fy1 = x0 / ds, y0 / ds, (x0 + ext_w) / ds, (y0 + ext_h) / ds
        ix0, iy0 = int(math.floor(fx0 + 1e-6)), int(math.floor(fy0 + 1e-6))
        ix1, iy1 = int(math.ceil(fx1 - 1e-6)), int(math.ceil(fy1 - 1e-6))
        ix1, iy1 = max(ix1, ix0 + 1), max(iy1, iy0 + 1)
        raw = self._read_level(level, ix0, iy0, ix1 - ix0, iy1 - iy0)
        box = (fx0 - ix0, fy0 - iy0, fx1 - ix0, fy1 - iy0)
        exact = all(abs(b - round(b)) < 1e-6 for b in box)
        if exact and raw.shape[1] == out_w and raw.shape[0] == out_h:
            return raw
        return _resize(raw, out_w, out_h, box, enlarge=(fx1 - fx0) < out_w)

    def read_region_mpp(self, x0: int, y0: int, size: int | tuple[int, int], target_mpp: float) -> np.ndarray:
        """RGB ``[h, w, 3]`` uint8 at ``target_mpp`` µm/px.

        ``(x0, y0)`` is the level-0 top-left; the region covers ``size * target_mpp / mpp`` level-0 px
        and is read from the best level, then resized to exactly ``size`` = w or (w, h) output px.
        """
        return self._as_rgb(self._region_mpp(x0, y0, size, target_mpp))

    def read_region_channels(self, x0: int, y0: int, size: int | tuple[int, int], target_mpp: float) -> np.ndarray:
        """All channels ``[h, w, C]`` uint8 at ``target_mpp``; same geometry as :meth:`read_region_mpp`.

        For multi-channel paired slides (multiplex TIFF); an RGB slide gives C = 3.
        """
        return self._region_mpp(x0, y0, size, target_mpp)

    def _region_mpp(self, x0: float, y0: float, size: int | tuple[int, int], target_mpp: float) -> np.ndarray:
        if target_mpp <= 0:
            raise SlideError(f"{self.path}: target mpp must be > 0 (got {target_mpp})")
        w, h = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
        scale = target_mpp / self.mpp  # level-0 px per output px
        return self._read_box(float(x0), float(y0), w * scale, h * scale, w, h, target_mpp)

    def read_at_mpp(self, mpp: float, channels: bool = False) -> np.ndarray:
        """The whole slide at ``mpp`` µm/px: ``[H * mpp0/mpp, W * mpp0/mpp, 3]`` uint8 (or all channels).

        Read in chunks of 2048 output px so that memory stays bounded for large slides.
        """
        if mpp <= 0:
            raise SlideError(f"{self.path}: mpp must be > 0 (got {mpp})")
        W, H = self.dimensions
        scale = mpp / self.mpp
        ow, oh = max(1, int(round(W / scale))), max(1, int(round(H / scale)))
        out = np.empty((oh, ow, self.channels), np.uint8)
        for oy in range(0, oh, _CHUNK):
            for ox in range(0, ow, _CHUNK):
                cw, ch = min(_CHUNK, ow - ox), min(_CHUNK, oh - oy)
                out[oy : oy + ch, ox : ox + cw] = self._read_box(ox * scale, oy * scale, cw * scale, ch * scale,
                                                                 cw, ch, mpp)
        return out if channels else self._as_rgb(out)

    def get_thumbnail(self, max_size: int) -> np.ndarray:
        """RGB thumbnail ``[h, w, 3]`` whose longer side is ``max_size`` px (aspect kept)."""
        W, H = self.dimensions
        mpp = self.mpp * max(W, H) / float(max_size)
        return self.read_at_mpp(mpp)


def _resize(raw: np.ndarray, out_w: int, out_h: int, box: tuple[float, float, float, float], enlarge: bool) -> np.ndarray:
    """Resize the float ``box`` of ``raw`` [h, w, C] to (out_w, out_h): area averaging, or bilinear to enlarge."""
    resample = Image.Resampling.BILINEAR if enlarge else Image.Resampling.BOX
    c = raw.shape[-1]
    if c == 3:
        img = Image.fromarray(raw, "RGB").resize((out_w, out_h), resample=resample, box=box)
        return np.asarray(img)
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(raw[..., i]), "L").resize((out_w, out_h), resample=resample, box=box))
        for i in range(c)
    ]
    return np.stack(planes, axis=-1)


# --------------------------------------------------------------------------------------------------
# opening
# --------------------------------------------------------------------------------------------------
class _BrokenLevels(Exception):
    """OpenSlide reads an empty reduced level (or misses the pyramid): use tiffslide."""


def _tiff_samples_per_pixel(path: Path) -> int | None:
    """Samples per pixel of the first TIFF page, or None when not a TIFF (cheap: reads the header)."""
    import tifffile

    try:
        with quiet_tifffile(), tifffile.TiffFile(str(path)) as tf:
            page = tf.pages.first
            spp = int(page.samplesperpixel)
            photometric = int(page.photometric)
            # RGB / YCbCr with 3 samples, or RGBA (extra sample) are "RGB"; minisblack with several = multiplex
            if photometric in (2, 6) and spp >= 3:
                return 3
            return spp if photometric in (0, 1) else 3
    except Exception:  # noqa: BLE001 - not a TIFF or unreadable: let the backends decide
        return None


def _check_openslide_levels(b: _OpenSlideBackend, path: Path) -> None:
    """Raise :class:`_BrokenLevels` when OpenSlide's view of the pyramid cannot be trusted."""
    if len(b.level_dimensions) == 1:
        if path.suffix.lower() in _TIFF_SUFFIXES and _tiffslide_level_count(path) > 1:
            raise _BrokenLevels("OpenSlide sees one level of a pyramid (SubIFD / OME layout)")
        return
    low = len(b.level_dimensions) - 1
    lw, lh = b.level_dimensions[low]
    w, h = min(lw, 1024), min(lh, 1024)
    x, y = (lw - w) // 2, (lh - h) // 2
    rgba = b.read_rgba(low, x, y, w, h)
    if rgba[..., 3].max() > 0 and rgba[..., :3].max() > 0:
        return
    # reduced level is empty: does level 0 have pixels in the same place?
    ds = b.level_downsamples[low]
    for fy in (0.25, 0.5, 0.75):
        for fx in (0.25, 0.5, 0.75):
            px, py = int((x + fx * w) * ds), int((y + fy * h) * ds)
            s = b.read_rgba(0, px, py, 16, 16)
            if s[..., 3].max() > 0 and s[..., :3].max() > 0:
                raise _BrokenLevels(f"level {low} empty where level 0 is not")


def _tiffslide_level_count(path: Path) -> int:
    try:
        import tiffslide

        with tiffslide.TiffSlide(str(path)) as ts:
            return int(ts.level_count)
    except Exception:  # noqa: BLE001 - tiffslide cannot read it: keep OpenSlide's view
        return 0


class _DamagedPixels(Exception):
    """A backend opens the file but cannot decode some of its tiles: the file is damaged or cut short."""


# (path, size, mtime_ns, backend) of slides whose tile spread decoded once in this process
_TILES_CHECKED: set[tuple[str, int, int, str]] = set()


def _probe_boxes(lw: int, lh: int, spread: bool) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) boxes of at most ``_PROBE`` px in a level of (lw, lh): a 3 x 3 grid (corners, edges,
    centre) with ``spread``, else the bottom-right corner only (the part a truncated copy loses first)."""
    w, h = min(lw, _PROBE), min(lh, _PROBE)
    fractions = _SPREAD if spread else (1.0,)
    boxes = {(int(fx * (lw - w)), int(fy * (lh - h)), w, h) for fy in fractions for fx in fractions}
    return sorted(boxes)


def _check_tiles(b: _Backend, path: Path) -> None:
    """Decode probe boxes at every level; raise :class:`_DamagedPixels` on a decoder error.

    TIFFs, whose tile extents :func:`~histokd.slides.integrity.tiff_damage` has checked without
    decoding, get the bottom-right corner only; other formats (MIRAX, DICOM, VMS, ...) a 3 x 3 spread
    per level, once per (path, size, mtime, backend) in a process.
    """
    spread = not is_tiff(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, b.name)
    if spread and key in _TILES_CHECKED:
        return
    for lvl, (lw, lh) in enumerate(b.level_dimensions):
        for x, y, w, h in _probe_boxes(lw, lh, spread):
            try:
                b.read(lvl, x, y, w, h)
            except Exception as e:  # noqa: BLE001 - every decoder raises its own types
                raise _DamagedPixels(f"{b.name} cannot decode level {lvl} at ({x}, {y}): "
                                     f"{type(e).__name__}: {one_line(e, 80)}") from e
    if spread:
        _TILES_CHECKED.add(key)


def _open_backend(name: str, path: Path) -> _Backend:
    b = _BACKENDS[name](path)
    try:
        if isinstance(b, _OpenSlideBackend):
            _check_openslide_levels(b, path)
        _check_tiles(b, path)
    except BaseException:
        b.close()
        raise
    return b


def open_slide(path: str | os.PathLike[str], mpp: float | None = None, backend: str = "auto") -> Slide:
    """Open a whole-slide image.

    Args:
        path: slide file (any format OpenSlide reads, or a TIFF tiffslide reads).
        mpp: level-0 µm/px to use when the slide has no resolution metadata (ignored otherwise,
            with a warning when it disagrees with the metadata by more than 5%).
        backend: "auto" (OpenSlide first, tiffslide fallback), "openslide" or "tiffslide".

    Raises:
        SlideError: missing, unreadable, corrupt / truncated or unsupported file; no mpp.
    """
    path = expand_user(path)
    if backend not in ("auto", *_BACKENDS):
        raise SlideError(f"{path}: unknown slide backend {backend!r}; use auto, openslide or tiffslide")
    if not path.exists():
        raise SlideError(f"{path}: slide file not found; fix the path in the cohort CSV (relative paths are "
                         f"relative to the CSV's folder)")
    if path.is_dir():  # a DICOM WSI is a folder of instances; OpenSlide opens it from any one of them
        instances = sorted(path.glob("*.dcm"))
        if not instances:
            raise SlideError(f"{path}: a folder without DICOM (.dcm) files; point the cohort at the slide file itself, "
                             f"or at the folder of a DICOM WSI")
        path = instances[0]
    if not path.is_file():
        raise SlideError(f"{path}: not a file; point the cohort at the slide file itself")
    if path.stat().st_size == 0:
        raise SlideError(f"{path}: the file is empty (0 bytes); {_fix_hint(path)}")
    damage = tiff_damage(path)
    if damage:
        raise SlideError(_damaged_message(path, damage))

    if backend == "auto":
        spp = _tiff_samples_per_pixel(path)
        order = ["tiffslide"] if spp is not None and spp != 3 else ["openslide", "tiffslide"]
    else:
        order = [backend]

    errors: list[str] = []
    damaged: list[str] = []
    b: _Backend | None = None
    for name in order:
        try:
            b = _open_backend(name, path)
            break
        except _BrokenLevels as e:
            log.debug("%s: OpenSlide pyramid not trusted (%s); trying tiffslide", path, e)
            errors.append(f"openslide: {e}")
            if backend != "auto":  # forced OpenSlide on a file it reads wrong: still usable, but say so
                raise SlideError(f"{path}: OpenSlide reads this pyramid wrongly ({e}); use backend='tiffslide'") from e
        except _DamagedPixels as e:
            log.debug("%s: %s", path, e)
            damaged.append(str(e))
        except Exception as e:  # noqa: BLE001 - each backend raises its own types
            msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            errors.append(f"{name}: {type(e).__name__}: {msg}")
    if b is None:
        if damaged:  # a backend opened it but could not decode its tiles
            raise SlideError(_damaged_message(path, damaged[0]))
        raise SlideError(_open_failure_message(path, errors))

    native = b.mpp()
    if native is None:
        if mpp is None:
            b.close()
            raise SlideError(
                f"{path}: no resolution (µm/px) metadata; pass --slide-mpp <µm/px> to `histokd tile` "
                f"(mpp=<µm/px> in open_slide) with the scanner's level-0 resolution, e.g. 0.25 for 40x"
            )
        if not mpp > 0:
            b.close()
            raise SlideError(f"{path}: mpp must be > 0 (got {mpp})")
        return _with_direct(Slide(path, b, float(mpp), mpp_source="given"), backend)
    if mpp is not None and abs(mpp - native) > 0.05 * native:
        log.warning("%s: slide metadata says %.4g µm/px; the given %.4g is ignored", path, native, mpp)
    return _with_direct(Slide(path, b, native), backend)


def _with_direct(slide: Slide, backend: str) -> Slide:
    """Under ``backend="auto"``, a tiled TIFF's levels are decoded directly where that gives the backend's
    exact pixels (:mod:`histokd.slides.tiled_tiff`); an explicit backend reads through that library alone."""
    if backend == "auto" and slide.channels == 3 and is_tiff(slide.path):
        slide._direct = TiledTiffLevels.open(slide.path, slide.level_dimensions, slide._b.read)
    return slide


def _damaged_message(path: Path, why: str) -> str:
    return (f"{path}: slide file is corrupt or truncated: {why}; re-copy it (an interrupted copy or download "
            f"cuts a file short) or re-export it from the scanner software, or drop it from the cohort")


def _open_failure_message(path: Path, errors: list[str]) -> str:
    detail = "; ".join(errors)[:300]
    if is_tiff(path):
        return (f"{path}: TIFF is corrupt or truncated and no reader can open it ({detail}); "
                f"{_fix_hint(path)}")
    return (f"{path}: unsupported or unreadable slide format ({detail}); convert it to a pyramidal TIFF "
            f"or a format OpenSlide reads (svs, ndpi, mrxs, scn, tif)")
