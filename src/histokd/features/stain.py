"""Stain normalisation of H&E tiles (``--stain-norm reinhard|macenko``), applied per tile before encoding.

- **Reinhard** (Reinhard et al. 2001): match the per-channel mean and std of the tile in CIELAB to a target.
  Statistics are taken over tissue pixels (L < 90) so that white background does not pull the mean.
- **Macenko** (Macenko et al. 2009): estimate the tile's two stain vectors in optical density (OD) from the
  plane of the two main eigenvectors (angles at the 1st/99th percentile), unmix the concentrations, scale
  them so that their 99th percentile matches the reference, and re-render them with the reference stains.
  Tiles with too little tissue (< 1% of pixels with OD > 0.15 in every channel) are returned unchanged.

Both work on ``[H, W, 3]`` uint8 RGB and return uint8. Targets default to a typical H&E appearance and can
be fitted on a reference tile with :meth:`StainNormalizer.fit`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from skimage.color import lab2rgb, rgb2lab

from histokd.errors import InputError
from histokd.registry import Registry

STAIN_NORMALIZERS: Registry[type[StainNormalizer]] = Registry("stain normaliser")


class StainNormalizer(ABC):
    """Base: ``fit(reference [H, W, 3] uint8)`` sets the target, ``__call__(tile) -> tile`` normalises."""

    @abstractmethod
    def fit(self, reference: np.ndarray) -> StainNormalizer:
        ...

    @abstractmethod
    def __call__(self, tile: np.ndarray) -> np.ndarray:
        ...


def build_stain_normalizer(name: str | None) -> StainNormalizer | None:
    """``None``/``"none"`` -> ``None``; else the registered normaliser with its default target."""
    if name is None or name == "none":
        return None
    try:
        return STAIN_NORMALIZERS.get(name)()
    except InputError as e:
        raise InputError(f"--stain-norm {name!r}: {e}") from None


def _tissue(lab: np.ndarray) -> np.ndarray:
    return lab[..., 0] < 90.0


@STAIN_NORMALIZERS.register("reinhard")
class Reinhard(StainNormalizer):
    # LAB statistics of a typical H&E tile (pink stroma, purple nuclei, some background)
    def __init__(self, mean: tuple[float, ...] = (65.0, 32.0, -19.0), std: tuple[float, ...] = (17.6, 12.2, 15.4)):
        self.mean = np.asarray(mean, np.float64)
        self.std = np.asarray(std, np.float64)

    @staticmethod
    def _stats(tile: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lab = rgb2lab(tile)
        px = lab[_tissue(lab)]
        if len(px) < 0.01 * lab[..., 0].size:
            px = lab.reshape(-1, 3)
        return lab, px.mean(0), px.std(0) + 1e-6

    def fit(self, reference: np.ndarray) -> Reinhard:
        _, self.mean, self.std = self._stats(reference)
        return self

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        lab, mu, sd = self._stats(tile)
        out = (lab - mu) / sd * self.std + self.mean
        out[..., 0] = out[..., 0].clip(0, 100)
        return (lab2rgb(out).clip(0, 1) * 255 + 0.5).astype(np.uint8)


_IO = 255.0  # transmitted light intensity


@STAIN_NORMALIZERS.register("macenko")
class Macenko(StainNormalizer):
    # reference H and E OD vectors (columns) and 99th-percentile concentrations of a typical H&E slide
    def __init__(
        self,
        stains: np.ndarray | None = None,
        max_conc: np.ndarray | None = None,
        alpha: float = 1.0,
        beta: float = 0.15,
    ):
        self.stains = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]]) if stains is None else stains
        self.max_conc = np.array([1.9705, 1.0308]) if max_conc is None else max_conc
        self.alpha = alpha
        self.beta = beta

    def _estimate(self, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """-> (stain matrix [3, 2] H then E, concentrations [2, H*W]) or None for too little tissue."""
        od = -np.log((tile.reshape(-1, 3).astype(np.float64) + 1) / _IO)
        od_t = od[(od > self.beta).all(1)]
        if len(od_t) < max(10, 0.01 * len(od)):
            return None
        _, vecs = np.linalg.eigh(np.cov(od_t.T))
        plane = vecs[:, 1:3]  # two largest eigenvalues (eigh sorts ascending)
        proj = od_t @ plane
        phi = np.arctan2(proj[:, 1], proj[:, 0])
        lo, hi = np.percentile(phi, [self.alpha, 100 - self.alpha])
        v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
        v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
        # hematoxylin absorbs more red than eosin does: put it first
        he = np.stack([v1, v2], 1) if v1[0] > v2[0] else np.stack([v2, v1], 1)
        he = he * np.sign(he.sum(0, keepdims=True))  # eigenvectors have arbitrary sign; OD is positive
        conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
        return he, conc

    def fit(self, reference: np.ndarray) -> Macenko:
        est = self._estimate(reference)
        if est is None:
            raise InputError("Macenko reference has too little tissue; pick a reference tile with stained tissue")
        self.stains, conc = est
        self.max_conc = np.percentile(conc, 99, axis=1)
        return self

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        est = self._estimate(tile)
        if est is None:
            return tile
        _, conc = est
        scale = self.max_conc / np.maximum(np.percentile(conc, 99, axis=1), 1e-6)
        od = self.stains @ (conc * scale[:, None])
        out = _IO * np.exp(-od.T) - 1
        return out.clip(0, 255).round().astype(np.uint8).reshape(tile.shape)
