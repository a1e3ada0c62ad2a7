"""Small tile images read from the slides, for models trained end to end on pixels (WENO ``encoder=cnn``).

A tiled workspace already knows every tile: ``coords`` [N, 2] (level-0 top-left, px) and
``patch_size_level0`` (the tile's side in level-0 px) from ``RUN/features/<enc>/<slide>.h5`` or
``RUN/tiles/<slide>.h5``. Here each tile is read again as a **small** image, ``size`` px wide, covering
the same area of tissue, i.e. at ``patch_size_level0 · level0_mpp / size`` µm/px (a 224 px tile at
0.5 µm/px read at 64 px is 1.75 µm/px), or at a fixed ``target_mpp`` centred on the tile.

Tiles are read once, up front, and kept in memory for the rest of the process (a 64 px RGB tile is
12 KiB; 10,000 tiles are 120 MiB): training reads every tile every epoch, and ``histokd demo`` trains
then labels in one process. The cache key holds the slide path, its modification time and size, the
tile geometry and a hash of the coordinates, so a changed slide or grid is read again.

API: :func:`read_tile_images` (one slide -> uint8 [N, size, size, 3]), :func:`clear_cache`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from histokd.errors import InputError, SlideError

log = logging.getLogger("histokd")

_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_BYTES = int(os.environ.get("HISTOKD_TILE_CACHE_MB", "1024")) * 2**20
"""Upper bound of the in-memory tile cache; least recently used slides are dropped past it."""


def tile_mpp(patch_size_level0: float, level0_mpp: float, size: int) -> float:
    """µm/px at which a ``size`` px image covers a tile of ``patch_size_level0`` level-0 px."""
    return float(patch_size_level0) * float(level0_mpp) / float(size)


def _key(path: Path, coords: np.ndarray, patch_size_level0: float, size: int, target_mpp: float | None,
         slide_mpp: float | None = None) -> tuple:
    st = path.stat()
    h = hashlib.sha1(np.ascontiguousarray(coords, dtype=np.int64).tobytes()).hexdigest()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size, float(patch_size_level0), int(size),
            None if target_mpp is None else float(target_mpp), None if slide_mpp is None else float(slide_mpp), h)


def read_tile_images(
    slide_path: str | os.PathLike[str],
    coords: np.ndarray,
    patch_size_level0: float,
    size: int = 64,
    target_mpp: float | None = None,
    slide_mpp: float | None = None,
    cache: bool = True,
) -> np.ndarray:
    """Read every tile of one slide as a small RGB image.

    Args:
        slide_path: the whole-slide image.
        coords: [N, 2] int level-0 top-left (x, y) of each tile.
        patch_size_level0: tile side in level-0 px (the feature file's attr of that name).
        size: output side in px (64-96 for a CPU).
        target_mpp: µm/px to read at; ``None`` = the whole tile squeezed into ``size`` px
            (:func:`tile_mpp`). With a value, a ``size`` px window at that resolution centred on the tile.
        slide_mpp: level-0 µm/px for slides without resolution metadata (a workspace slide: the mpp it was
            tiled with, the ``level0_mpp`` of its :class:`~histokd.data.slide_source.SlideSource`).
        cache: keep the result in memory (see the module docstring).

    Returns:
        uint8 [N, size, size, 3].

    Raises:
        SlideError: the slide cannot be opened or read.
        InputError: bad ``coords`` / ``size``.
    """
    from histokd.slides.reader import open_slide

    path = Path(slide_path)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if size < 8:
        raise InputError(f"{path}: tile image size must be at least 8 px, got {size}")
    if not path.exists():
        raise SlideError(f"{path}: slide not found; check the cohort's path column")
    key = _key(path, coords, patch_size_level0, size, target_mpp, slide_mpp) if cache else None
    if key is not None:
        with _CACHE_LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
    out = np.empty((len(coords), size, size, 3), np.uint8)
    with open_slide(path, mpp=slide_mpp) as slide:
        mpp = target_mpp if target_mpp is not None else tile_mpp(patch_size_level0, slide.mpp, size)
        # offset of the read window's top-left from the tile's (0 when the window is the tile)
        off = (float(patch_size_level0) - size * mpp / slide.mpp) / 2.0
        for i, (x, y) in enumerate(coords):
            out[i] = slide.read_region_mpp(int(round(x + off)), int(round(y + off)), size, mpp)
    if key is not None:
        _store(key, out)
    return out


def _store(key: tuple, arr: np.ndarray) -> None:
    with _CACHE_LOCK:
        _CACHE[key] = arr
        total = sum(a.nbytes for a in _CACHE.values())
        while total > CACHE_BYTES and len(_CACHE) > 1:
            _, old = _CACHE.popitem(last=False)
            total -= old.nbytes


def clear_cache() -> None:
    """Forget every cached tile image."""
    with _CACHE_LOCK:
        _CACHE.clear()


def cache_bytes() -> int:
    """Bytes currently held by the tile cache."""
    with _CACHE_LOCK:
        return sum(a.nbytes for a in _CACHE.values())


def dataset_tile_images(
    ds: object,
    size: int = 64,
    target_mpp: float | None = None,
    what: str = "tile images",
) -> tuple[list[np.ndarray], list[int], list[float]]:
    """Tile images of every bag of a workspace ``BagDataset``, read up front (and cached) through each
    bag's slide (``ds.slide(i)``, :class:`~histokd.data.slide_source.SlideSource`).

    Returns ``(images, kept, patch_sizes)``: ``images[k]`` uint8 [N_k, 3, size, size] (channels first,
    ready for a CNN) for bag ``kept[k]`` of ``ds``, in the order of the bag's tiles (its ``coords``);
    ``patch_sizes[k]`` its tiles' side in level-0 px. A slide that cannot be read is skipped with a
    warning (the others go on); :class:`InputError` when none can be read.
    """
    import h5py

    from histokd.errors import HistokdError
    from histokd.progress import progress

    images: list[np.ndarray] = []
    kept: list[int] = []
    sizes: list[float] = []
    failed: dict[str, str] = {}
    n = len(ds)  # type: ignore[arg-type]
    with progress() as bar:
        task = bar.add_task(what, total=n, unit="slide")
        for i in range(n):
            rec = ds.records[i]  # type: ignore[attr-defined]
            try:
                bag = ds[i]  # type: ignore[index]
                if bag.coords is None or rec.path is None:
                    raise InputError(f"{rec.slide_id}: bag has no tile coordinates; re-run `histokd embed`")
                with h5py.File(rec.path, "r") as f:
                    ps = f.attrs.get("patch_size_level0")
                if ps is None:
                    raise InputError(f"{rec.path}: no patch_size_level0 attribute; re-run `histokd embed`")
                img = ds.slide(i).read_tiles(bag.coords, float(ps), size, target_mpp)  # type: ignore[attr-defined]
                images.append(np.ascontiguousarray(img.transpose(0, 3, 1, 2)))
                kept.append(i)
                sizes.append(float(ps))
            except (HistokdError, OSError) as e:
                failed[rec.slide_id] = str(e)
                log.warning("%s: %s", rec.slide_id, e)
            bar.advance(task)
    if not kept and n:
        raise InputError(f"{what}: no slide could be read ({len(failed)} failed); see the warnings above")
    if failed:
        log.warning("%s: %d of %d slides skipped", what, len(failed), n)
    return images, kept, sizes
