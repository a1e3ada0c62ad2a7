"""Is a slide file whole? The cheap structural check run when a slide is opened (issue 16).

A slide copy cut short (an interrupted download, ``rsync`` or ``cp`` onto a full disk) often still
opens: its header and first pages are intact, and JPEG decoders fill missing tile data with grey
without an error, so tiling and features silently use wrong pixels (a 75% copy of a pyramidal TIFF
differs in thousands of level-0 pixels), or a lost reduced level makes tissue detection see nothing.

For the TIFF family (every file with a TIFF or BigTIFF header: ``.tif``, ``.tiff``, ``.svs``,
``.ndpi``, ``.scn``, ``.bif``, ``.qptiff``, ...) :func:`tiff_damage` reads the IFDs only, nothing is
decoded: the chain of pages must end inside the file, and every page's (and SubIFD's) tile / strip
``offset + byte count`` must lie within the file size. Results are cached per (path, size, mtime), so
opening a slide again in the same process costs a ``stat``. Formats without a TIFF header are checked
by the reader, which decodes a spread of tiles at every level (see ``reader._check_tiles``).
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from histokd.errors import one_line

log = logging.getLogger("histokd")

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_tiff(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` starts with a TIFF / BigTIFF header (whatever its suffix)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in TIFF_MAGIC
    except OSError:
        return False


@contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's logger: a damaged file is reported by histokd, once, as a SlideError."""
    tlog = logging.getLogger("tifffile")
    level = tlog.level
    tlog.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tlog.setLevel(level)


def tiff_damage(path: str | os.PathLike[str]) -> str | None:
    """Why the TIFF at ``path`` is truncated or damaged (one line), or None when its structure is whole.

    None too when ``path`` is not a TIFF, or when tifffile cannot parse its header at all: the slide
    backends then decide, and report a file they cannot open themselves.
    """
    p = Path(path)
    if not is_tiff(p):
        return None
    st = p.stat()
    return _tiff_damage(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _tiff_damage(path: str, size: int, mtime_ns: int) -> str | None:  # noqa: ARG001 - mtime is the cache key
    import tifffile

    with quiet_tifffile():
        try:
            tf = tifffile.TiffFile(path)
        except Exception as e:  # noqa: BLE001 - not parseable at all: the backends decide
            log.debug("%s: tifffile cannot parse the header (%s); leaving the check to the slide backends", path, e)
            return None
        with tf:
            return _pages_damage(tf, tf.pages, size, "page")


def _pages_damage(tf: Any, pages: Any, size: int, what: str) -> str | None:
    """The first problem of ``pages`` (a tifffile ``TiffPages``: top-level pages or a page's SubIFDs)."""
    offsets: list[int] = []
    it = iter(pages)
    i = 0
    while True:
        try:
            page = next(it)
        except StopIteration:
            break
        except Exception as e:  # noqa: BLE001 - an IFD inside the file that tifffile cannot parse
            return f"{what} {i} cannot be parsed ({type(e).__name__}: {one_line(e, 80)})"
        offsets.append(int(page.offset))
        why = _page_data_damage(page, size)
        if why:
            return f"{what} {i}: {why}"
        sub = page.subifds
        if sub:
            beyond = [int(o) for o in sub if int(o) >= size]
            if beyond:
                return f"{what} {i}: its reduced level (SubIFD) at byte {beyond[0]} lies past the end of the file ({size} bytes)"
            try:
                subpages = page.pages  # parses the first SubIFD
            except Exception as e:  # noqa: BLE001 - an IFD inside the file that tifffile cannot parse
                return f"{what} {i} SubIFD 0 cannot be parsed ({type(e).__name__}: {one_line(e, 80)})"
            why = _pages_damage(tf, subpages, size, f"{what} {i} SubIFD")
            if why:
                return why
        i += 1
    if what == "page":  # the top-level chain: the last page's link to the next one must end the chain
        return _chain_damage(tf, pages, offsets, size)
    return None


def _page_data_damage(page: Any, size: int) -> str | None:
    """Tile / strip extents of one page against the file size (nothing is read or decoded)."""
    offs = np.asarray(page.dataoffsets, np.int64).ravel()
    counts = np.asarray(page.databytecounts, np.int64).ravel()
    kind = "tile" if page.is_tiled else "strip"
    if len(offs) != len(counts):
        return f"has {len(offs)} {kind} offsets but {len(counts)} byte counts"
    if len(offs) == 0 and int(np.prod(page.shape or (0,))) > 0:
        return f"{'x'.join(map(str, page.shape))} px but no {kind} offsets"
    ends = offs + counts
    bad = np.flatnonzero((counts > 0) & ((ends > size) | (offs < 0)))
    if len(bad):
        j = int(bad[0])
        more = f", {len(bad)} {kind}s cut off" if len(bad) > 1 else ""
        return f"{kind} {j} of {len(offs)} ends at byte {int(ends[j])} but the file has {size} bytes{more}"
    return None


def _chain_damage(tf: Any, pages: Any, offsets: list[int], size: int) -> str | None:
    """The pointer after the last page tifffile read must be 0 (end) or another known page."""
    pos = pages.next_page_offset  # file position of the last page's next-IFD pointer
    if pos is None:
        return None
    tiff = tf.tiff
    fh = tf.filehandle
    if pos + tiff.offsetsize > size:
        return f"the link after page {len(offsets) - 1} lies past the end of the file ({size} bytes)"
    fh.seek(pos)
    nxt = int(struct.unpack(tiff.offsetformat, fh.read(tiff.offsetsize))[0])
    if nxt == 0 or nxt in offsets:  # end of the chain (or a loop back, which tifffile stops)
        return None
    if nxt >= size:
        return f"page {len(offsets)} starts at byte {nxt}, past the end of the file ({size} bytes)"
    return f"page {len(offsets)} at byte {nxt} cannot be read (its tag list is cut or corrupt)"
