"""Load one slide at the IFKD working resolution, with its pseudo-mask, tissue and ground truth aligned.

Every array of a :class:`~histokd.segmentation.regions.SlideImage` has the geometry of
``Slide.read_at_mpp(work_mpp)``; the level-0 -> working downsample is measured per axis from that
image (``W0 / w``, ``H0 / h``), so rounding never misaligns targets and pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from histokd.segmentation.pseudo import TileProbs, tile_map
from histokd.segmentation.regions import SlideImage


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask [h, w] to ``shape`` (h, w)."""
    if mask.shape == tuple(shape):
        return mask.astype(bool)
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 127


def resize_prob(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map [h, w] to ``shape`` (h, w)."""
    if prob.shape == tuple(shape):
        return prob.astype(np.float32)
    img = Image.fromarray(prob.astype(np.float32))  # mode "F"
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def read_slide_image(
    slide_path: str | os.PathLike[str], work_mpp: float, slide_mpp: float | None = None
) -> tuple[np.ndarray, tuple[int, int], float]:
    """Whole slide at ``work_mpp`` µm/px -> (image [h, w, 3] uint8, level-0 (W, H), level-0 mpp)."""
    from histokd.slides.reader import open_slide

    with open_slide(Path(slide_path), mpp=slide_mpp) as slide:
        image = slide.read_at_mpp(work_mpp)
        return image, tuple(slide.dimensions), float(slide.mpp)  # type: ignore[return-value]


def build_slide_image(
    slide_id: str,
    image: np.ndarray,
    dims0: tuple[int, int],
    tiles: TileProbs,
    label: int,
    mask_path: str | os.PathLike[str] | None = None,
) -> SlideImage:
    """Assemble a :class:`SlideImage`: pseudo-mask painted from ``tiles`` on the image's grid; GT mask
    (if ``mask_path``) loaded and resized (nearest) to the same grid."""
    h, w = image.shape[:2]
    ds = (dims0[0] / w, dims0[1] / h)
    target, covered = tile_map(tiles.probs, tiles.coords, tiles.patch_size_level0, (h, w), ds)
    gt = None
    if mask_path is not None and str(mask_path) not in ("", "nan", "None"):
        from histokd.slides.masks import load_mask

        m, _ = load_mask(mask_path, dims0)
        gt = resize_mask(m, (h, w))
    return SlideImage(slide_id, image, target, int(label), gt, covered, ds)
