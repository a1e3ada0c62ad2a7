"""The colour of a slide's tissue, as a short vector: what a change of stain, stain protocol or scanner moves.

:func:`tissue_colour_descriptor` reads the slide's thumbnail at the resolution of the tissue mask that
``histokd tile`` stored (``RUN/tiles/<slide>.h5`` dataset ``tissue_mask``), keeps the tissue pixels and
returns ``[12]`` float64: the mean and standard deviation of their optical density ``OD = -ln((RGB + 1) / 256)``
per channel, and the mean and standard deviation of the unit OD vector per channel (the stain's hue,
independent of how much stain there is). Used by the out-of-distribution flag of model bundles
(:mod:`histokd.features.ood`, ``docs/predict.md``).
"""

from __future__ import annotations

import os

import numpy as np

from histokd.errors import SlideError
from histokd.slides.reader import open_slide
from histokd.slides.tiling import read_tiles


def tissue_colour_descriptor(slide_path: str | os.PathLike[str], tiles_h5: str | os.PathLike[str],
                             mpp: float | None = None) -> np.ndarray:
    """``[12]`` colour statistics of the tissue of one tiled slide (see the module docstring); ``mpp``: the
    level-0 µm/px it was tiled with (for slides without resolution metadata)."""
    from skimage.transform import resize

    grid = read_tiles(tiles_h5, with_mask=True)
    mask = grid.tissue_mask
    if mask is None or not mask.any():
        raise SlideError(f"{tiles_h5}: no tissue mask stored; re-run `histokd tile` for this slide")
    with open_slide(slide_path, mpp=mpp) as slide:
        thumb = slide.get_thumbnail(max(mask.shape))
    if thumb.shape[:2] != mask.shape:
        mask = resize(mask.astype(np.float32), thumb.shape[:2], order=0, anti_aliasing=False) > 0.5
    px = thumb[mask].astype(np.float64)
    if len(px) == 0:
        raise SlideError(f"{tiles_h5}: the tissue mask selects no pixel of the thumbnail; re-run `histokd tile`")
    od = -np.log((px + 1.0) / 256.0)
    unit = od / np.maximum(np.linalg.norm(od, axis=1, keepdims=True), 1e-6)
    return np.concatenate([od.mean(0), od.std(0), unit.mean(0), unit.std(0)])
