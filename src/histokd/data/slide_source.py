"""Where a bag's slide lives, and the one way a method reads its pixels.

A workspace :class:`~histokd.data.bags.BagDataset` knows each bag's slide from the cohort it was built
from: the slide file (``path``), the level-0 µm/px it was tiled with (``level0_mpp``: ``--slide-mpp`` for
slides without resolution metadata) and its tumour mask (``mask_path``) where the cohort gives one.
Methods that read pixels (IFKD, end-to-end WENO) ask the dataset (``ds.slide(i)``) and read through the
:class:`SlideSource` it returns; they never open the cohort or the slide files themselves. Labellers that
segment get the same object from ``histokd label`` (:class:`~histokd.methods.base.SlideLabeler`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histokd.data.instance_labels import known_value
from histokd.errors import InputError


def _cell(row: Any, key: str) -> Any:
    """``row[key]`` of a mapping / pandas Series / object with attributes; None where absent or empty
    (:func:`~histokd.data.instance_labels.known_value`, the cohort's one rule for an empty cell)."""
    try:
        v = row[key]
    except (KeyError, IndexError, TypeError):
        v = getattr(row, key, None)
    return v if known_value(v) and str(v).strip() not in ("nan", "None") else None


@dataclass(frozen=True)
class SlideSource:
    """One slide: its file, the level-0 µm/px it was tiled with, and its tumour mask (or None)."""

    slide_id: str
    path: Path
    level0_mpp: float | None = None
    mask_path: Path | None = None

    @classmethod
    def of(cls, row: Any, slide_id: str | None = None) -> "SlideSource":
        """The slide of a cohort row (a mapping, pandas Series or object with ``path``, optional
        ``level0_mpp``, ``mask_path``, ``slide_id``). A row without a path raises a one-line error."""
        if isinstance(row, SlideSource):
            return row
        sid = str(slide_id if slide_id is not None else _cell(row, "slide_id"))
        path = _cell(row, "path")
        if path is None:
            raise InputError(f"slide {sid}: the cohort row has no path; fill its path column")
        mpp = _cell(row, "level0_mpp")
        try:
            mpp_f = float(mpp) if mpp is not None else None
        except (TypeError, ValueError):
            mpp_f = None
        mask = _cell(row, "mask_path")
        return cls(sid, Path(str(path)), mpp_f if mpp_f is not None and mpp_f > 0 else None,
                   Path(str(mask)) if mask is not None else None)

    def read_at_mpp(self, mpp: float) -> tuple[np.ndarray, tuple[int, int]]:
        """The whole slide at ``mpp`` µm/px -> (image [h, w, 3] uint8, level-0 (W, H))."""
        from histokd.segmentation.io import read_slide_image

        image, dims0, _ = read_slide_image(self.path, mpp, slide_mpp=self.level0_mpp)
        return image, dims0

    def read_tiles(self, coords: np.ndarray, patch_size_level0: float, size: int,
                   target_mpp: float | None = None) -> np.ndarray:
        """Every tile at ``coords`` as a small uint8 image [N, size, size, 3]
        (:func:`histokd.data.tile_images.read_tile_images`, cached)."""
        from histokd.data.tile_images import read_tile_images

        return read_tile_images(self.path, coords, float(patch_size_level0), size, target_mpp,
                                slide_mpp=self.level0_mpp)
