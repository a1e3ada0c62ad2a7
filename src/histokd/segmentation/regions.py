"""Slides held in memory at the working resolution, region sampling for training, whole-map inference.

At 8-16 µm/px a whole slide is a few thousand pixels a side at most (a 25 mm section at 8 µm/px is
about 3 000 px), so each slide is read once with ``Slide.read_at_mpp`` and kept as an array; training
regions are crops of it, and inference runs the fully convolutional net over overlapping windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

# Fixed normalisation of RGB uint8 -> roughly zero-mean unit-variance inputs (H&E, no dataset stats).
_MEAN = np.array([0.70, 0.55, 0.70], np.float32)
_STD = np.array([0.20, 0.20, 0.15], np.float32)


@dataclass
class SlideImage:
    """One slide at the working resolution.

    ``image`` [h, w, 3] uint8; ``target`` [h, w] float32 soft tumour probability (the current training
    target); ``label`` 1 for a tumour slide, 0 for a tumour-free one, -1 unknown; ``gt`` [h, w] bool
    ground-truth mask or None; ``tissue`` [h, w] bool (pixels some tile covered);
    ``downsample`` (ds_x, ds_y) level-0 px per working px.
    """

    slide_id: str
    image: np.ndarray
    target: np.ndarray
    label: int
    gt: np.ndarray | None
    tissue: np.ndarray
    downsample: tuple[float, float]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """[B, h, w, 3] uint8 -> [B, 3, h, w] float32 normalised."""
    x = (images.astype(np.float32) / 255.0 - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _pad_to(arr: np.ndarray, size: int, value: float) -> np.ndarray:
    h, w = arr.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return arr
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad, constant_values=value)


def sample_regions(
    slides: list[SlideImage], n_per_slide: int, size: int, rng: np.random.Generator, augment: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_slide`` random ``size``² crops of every slide -> (images [B, size, size, 3] uint8,
    targets [B, size, size] float32).

    Crop centres are drawn from tissue pixels (any pixel when a slide has none), so that white
    background does not dominate. Slides smaller than ``size`` are padded with white / target 0.
    Augmentation: random flips and 90° rotations (histology has no canonical orientation).
    """
    imgs, tgts = [], []
    for s in slides:
        img = _pad_to(s.image, size, 255)
        tgt = _pad_to(s.target, size, 0.0)
        tis = _pad_to(s.tissue, size, False)
        h, w = tgt.shape
        cand = np.flatnonzero(tis.ravel())
        for _ in range(n_per_slide):
            if cand.size:
                r, c = divmod(int(cand[rng.integers(cand.size)]), w)
            else:
                r, c = int(rng.integers(h)), int(rng.integers(w))
            r0 = int(np.clip(r - size // 2, 0, h - size))
            c0 = int(np.clip(c - size // 2, 0, w - size))
            ci = img[r0 : r0 + size, c0 : c0 + size]
            ct = tgt[r0 : r0 + size, c0 : c0 + size]
            if augment:
                k = int(rng.integers(4))
                ci, ct = np.rot90(ci, k), np.rot90(ct, k)
                if rng.random() < 0.5:
                    ci, ct = ci[:, ::-1], ct[:, ::-1]
            imgs.append(np.ascontiguousarray(ci))
            tgts.append(np.ascontiguousarray(ct))
    return np.stack(imgs), np.stack(tgts).astype(np.float32)


@torch.no_grad()
def predict_map(net: torch.nn.Module, image: np.ndarray, window: int = 512, overlap: int = 32) -> np.ndarray:
    """Fused tumour probability [h, w] float32 of a whole slide image [h, w, 3] uint8.

    The image is padded (white) to a multiple of the net's stride and run in overlapping ``window``²
    windows; each window keeps its centre (``overlap`` px margins dropped) to avoid border effects.
    """
    net.eval()
    stride = int(getattr(net, "stride", 1))
    h, w = image.shape[:2]
    window = max(stride, window // stride * stride)
    overlap = min(overlap // stride * stride, window // 4 // stride * stride)
    H = int(np.ceil(h / stride) * stride)
    W = int(np.ceil(w / stride) * stride)
    padded = np.pad(image, [(0, H - h), (0, W - w), (0, 0)], constant_values=255)
    if H <= window and W <= window:
        return net(to_tensor(padded[None])).fused[0, 0].numpy()[:h, :w].astype(np.float32)
    out = np.zeros((H, W), np.float32)
    step = window - 2 * overlap
    for r0 in range(0, H, step):
        for c0 in range(0, W, step):
            rs, cs = max(0, min(r0 - overlap, H - window)), max(0, min(c0 - overlap, W - window))
            tile = padded[rs : rs + window, cs : cs + window]
            p = net(to_tensor(tile[None])).fused[0, 0].numpy()
            re, ce = min(r0 + step, H), min(c0 + step, W)
            out[r0:re, c0:ce] = p[r0 - rs : re - rs, c0 - cs : ce - cs]
    return out[:h, :w]


def smooth(prob: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a probability map [h, w] (``sigma`` in working px; 0 = none)."""
    if sigma <= 0:
        return prob.astype(np.float32)
    return ndimage.gaussian_filter(prob.astype(np.float32), sigma=sigma, mode="nearest")
