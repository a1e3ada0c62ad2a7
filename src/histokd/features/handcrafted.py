"""The ``handcrafted`` encoder: colour, texture and nuclear statistics of H&E tiles, batched in torch.

Features (55-d, in this order):

- colour (21): RGB mean and std (6); HED (skimage's ``rgb2hed`` colour deconvolution, optical-density
  units) mean and std (6) and 10/50/90th percentiles (9);
- texture, local binary patterns (20): rotation-invariant uniform LBP (8 neighbours, 10 bins) of the grey
  image at radius 1 and 3 px, as histograms (fractions of pixels);
- texture, grey-level co-occurrence (8): contrast, homogeneity, energy and correlation of the symmetric
  GLCM (8 grey levels, horizontal + vertical offsets averaged) at distances 1 and 3 px;
- nuclei (6): hematoxylin blobs (H optical density > 0.05, connected components of >= 8 px): count per
  10,000 px, mean and std area (px), fraction of the tile they cover, mean H inside them (darkness),
  mean grey level outside them.

Everything except the blob labelling (``scipy.ndimage.label``, per tile) is vectorised over the batch.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from scipy import ndimage

from histokd.features.encoders import Encoder

# skimage.color.hed_from_rgb (Ruifrok & Johnston): optical density -> H, E, D stain amounts
_HED_FROM_RGB = (
    (1.87798274, -1.00767869, -0.55611582),
    (-0.06590806, 1.13473037, -0.1355218),
    (-0.60190736, -0.48041419, 1.57358807),
)
_LOG_ADJUST = float(np.log(1e-6))
_GLCM_LEVELS = 8
_H_THRESHOLD = 0.05  # hematoxylin OD of nuclei; stroma/eosin sits below 0.02 (measured on typical H&E colours)
_MIN_BLOB_PX = 8
_VERSION = "handcrafted-v1"  # bump when the features change, so that resumed runs do not mix versions


def rgb_to_hed(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in [0, 1] -> [B, 3, H, W] H, E, D amounts (same values as ``skimage.color.rgb2hed``)."""
    m = torch.tensor(_HED_FROM_RGB, dtype=x.dtype, device=x.device)
    od = torch.log(x.clamp_min(1e-6)) / _LOG_ADJUST
    return torch.einsum("bchw,cd->bdhw", od, m).clamp_min(0)


def _lbp_histogram(gray: torch.Tensor, radius: int) -> torch.Tensor:
    """[B, H, W] -> [B, 10] rotation-invariant uniform LBP histogram (8 neighbours at ``radius`` px)."""
    r = radius
    c = gray[:, r:-r, r:-r]
    h, w = c.shape[1:]
    offsets = [(-r, -r), (-r, 0), (-r, r), (0, r), (r, r), (r, 0), (r, -r), (0, -r)]  # cyclic order
    bits = [gray[:, r + dy : r + dy + h, r + dx : r + dx + w] >= c for dy, dx in offsets]
    ones = torch.zeros(c.shape, dtype=torch.uint8, device=c.device)
    transitions = torch.zeros_like(ones)
    for k in range(8):
        ones += bits[k]
        transitions += bits[k] ^ bits[k - 1]  # cyclic: k-1 = -1 wraps to the last neighbour
    code = torch.where(transitions <= 2, ones, torch.full_like(ones, 9)).long()  # 0..8 uniform, 9 the rest
    # per-tile histogram with one bincount: offset each tile's codes by 10 * tile index
    b = c.shape[0]
    code = code.flatten(1) + 10 * torch.arange(b, device=c.device).view(b, 1)
    hist = torch.bincount(code.flatten(), minlength=10 * b).view(b, 10).float()
    return hist / hist.sum(1, keepdim=True)


def _glcm_props(q: torch.Tensor, d: int) -> torch.Tensor:
    """[B, H, W] grey levels 0..L-1 -> [B, 4] contrast, homogeneity, energy, correlation at distance ``d``."""
    L = _GLCM_LEVELS
    props = []
    for a, b in ((q[:, :, :-d], q[:, :, d:]), (q[:, :-d, :], q[:, d:, :])):
        n = q.shape[0]
        idx = (a * L + b).flatten(1) + L * L * torch.arange(n, device=q.device).view(n, 1)
        P = torch.bincount(idx.flatten(), minlength=n * L * L).view(n, L, L).float()
        P = P + P.transpose(1, 2)  # symmetric
        P = P / P.sum((1, 2), keepdim=True)
        i = torch.arange(L, device=q.device, dtype=torch.float).view(1, L, 1)
        j = i.transpose(1, 2)
        contrast = (P * (i - j) ** 2).sum((1, 2))
        homogeneity = (P / (1 + (i - j) ** 2)).sum((1, 2))
        energy = (P**2).sum((1, 2)).sqrt()
        mu_i = (P * i).sum((1, 2))
        mu_j = (P * j).sum((1, 2))
        sd_i = ((P * (i - mu_i.view(-1, 1, 1)) ** 2).sum((1, 2))).sqrt()
        sd_j = ((P * (j - mu_j.view(-1, 1, 1)) ** 2).sum((1, 2))).sqrt()
        cov = (P * (i - mu_i.view(-1, 1, 1)) * (j - mu_j.view(-1, 1, 1))).sum((1, 2))
        # a flat tile has zero variance: define its correlation as 1 (perfectly predictable), as skimage does
        corr = torch.where((sd_i * sd_j) > 1e-12, cov / (sd_i * sd_j).clamp_min(1e-12), torch.ones_like(cov))
        props.append(torch.stack([contrast, homogeneity, energy, corr], 1))
    return (props[0] + props[1]) / 2


def _blob_stats(h: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """[B, H, W] hematoxylin OD and grey -> [B, 6] nuclear-blob statistics (see module docstring)."""
    out = np.zeros((h.shape[0], 6), np.float32)
    n_px = h.shape[1] * h.shape[2]
    for k in range(h.shape[0]):
        fg = h[k] > _H_THRESHOLD
        labels, n = ndimage.label(fg)
        if n:
            areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            keep = areas >= _MIN_BLOB_PX
            areas = areas[keep]
            mask = np.r_[False, keep][labels]  # look-up table: label -> kept
        else:
            areas, mask = np.zeros(0), fg
        if len(areas):
            out[k, :5] = (
                len(areas) * 1e4 / n_px,
                areas.mean(),
                areas.std(),
                mask.mean(),
                h[k][mask].mean(),
            )
        out[k, 5] = gray[k][~mask].mean() if (~mask).any() else 0.0
    return out


class HandcraftedEncoder(Encoder):
    """55-d colour/texture/nuclei statistics; input: RGB in [0, 1] (no normalisation), 224 px at 0.5 µm/px."""

    exportable = False  # nuclear blobs are labelled by scipy.ndimage, outside the torch graph

    def __init__(self, input_size: int = 224, mpp: float = 0.5) -> None:
        cfg = f"{_VERSION}:{input_size}:{mpp}:{_GLCM_LEVELS}:{_H_THRESHOLD}:{_MIN_BLOB_PX}"
        super().__init__(
            name="handcrafted",
            dim=55,
            input_size=input_size,
            mpp=mpp,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            weights_hash=hashlib.sha256(cfg.encode()).hexdigest(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] RGB in [0, 1] -> [B, 55] float32."""
        x = x.float().clamp(0, 1)
        hed = rgb_to_hed(x)
        flat_rgb, flat_hed = x.flatten(2), hed.flatten(2)
        # percentiles from every other pixel in each direction: a quarter of the sort, same statistic
        sub = hed[:, :, ::2, ::2].flatten(2).sort(dim=2).values
        pos = [round(p * (sub.shape[2] - 1)) for p in (0.1, 0.5, 0.9)]
        q = sub[:, :, pos].permute(2, 0, 1)  # [3, B, 3]
        colour = torch.cat(
            [flat_rgb.mean(2), flat_rgb.std(2), flat_hed.mean(2), flat_hed.std(2), q.permute(1, 2, 0).flatten(1)], 1
        )
        gray = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
        lbp = torch.cat([_lbp_histogram(gray, 1), _lbp_histogram(gray, 3)], 1)
        levels = (gray * _GLCM_LEVELS).long().clamp(0, _GLCM_LEVELS - 1)
        glcm = torch.cat([_glcm_props(levels, 1), _glcm_props(levels, 3)], 1)
        blobs = torch.from_numpy(_blob_stats(hed[:, 0].cpu().numpy(), gray.cpu().numpy())).to(x.device)
        return torch.cat([colour, lbp, glcm, blobs], 1).float()
