"""More From Less augmentations: batched, with per-sample parameters, driven by an explicit
``torch.Generator`` so that a run is reproducible (see :mod:`histokd.methods.more_from_less` for the choices).

Geometry: D4 flips / 90° rotations and a random resized crop as one affine ``theta`` per sample
(:func:`draw_geometry`, :func:`apply_geometry`). H&E: colour and stain jitter, Gaussian noise
(:func:`jitter_he`). Dense (multiplex) tiles: per-channel gain, noise, channel dropout (:func:`jitter_dense`).
:func:`augment_pair` draws both branches' views of a batch of pairs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def draw_geometry(n: int, gen: torch.Generator, crop_scale: tuple[float, float] = (0.75, 1.0)) -> torch.Tensor:
    """Per-sample affine ``theta`` ``[n, 2, 3]`` (normalised coords): a D4 element then a resized crop.

    Rotations by k·90° and flips map pixel centres onto pixel centres, so without a crop the warp is exact.
    """
    k = torch.randint(0, 4, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    ang = k.to(torch.float64) * (math.pi / 2)
    cos, sin = torch.cos(ang).round(), torch.sin(ang).round()
    r = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [n, 2, 2]
    fx = torch.where(flip, -1.0, 1.0).to(torch.float64)
    r = r * torch.stack([fx, torch.ones_like(fx)], -1)[:, None, :]  # flip x before rotating
    side = torch.sqrt(_uniform(n, crop_scale[0], crop_scale[1], gen)).to(torch.float64)
    tx = (torch.rand(n, generator=gen) * 2 - 1).to(torch.float64) * (1 - side)
    ty = (torch.rand(n, generator=gen) * 2 - 1).to(torch.float64) * (1 - side)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, :, :2] = r * side[:, None, None]
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    return theta.to(torch.float32)


def apply_geometry(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp ``x`` [B, C, H, W] with per-sample ``theta`` [B, 2, 3] (bilinear, border padding)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jitter_he(x: torch.Tensor, gen: torch.Generator, strength: float = 0.5, noise_p: float = 0.3) -> torch.Tensor:
    """Colour and stain jitter of RGB tiles ``[B, 3, H, W]`` in [0, 1].

    Stain jitter raises each channel to a power near 1, i.e. scales its optical density ``−log(I)``,
    which mimics staining-intensity variation between labs.
    """
    b = x.shape[0]
    od_gain = _uniform(b * 3, 1 - 0.2 * strength, 1 + 0.2 * strength, gen).view(b, 3, 1, 1)
    x = x.clamp_min(1e-3).pow(od_gain)
    bright = _uniform(b, 1 - 0.4 * strength, 1 + 0.4 * strength, gen).view(b, 1, 1, 1)
    x = x * bright
    contrast = _uniform(b, 1 - 0.4 * strength, 1 + 0.4 * strength, gen).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    sat = _uniform(b, 1 - 0.4 * strength, 1 + 0.4 * strength, gen).view(b, 1, 1, 1)
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - grey) * sat + grey
    x = _noise(x, gen, noise_p, 0.03)
    return x.clamp(0, 1)


def jitter_dense(x: torch.Tensor, gen: torch.Generator, drop_p: float = 0.2, noise_p: float = 0.3) -> torch.Tensor:
    """Intensity jitter, Gaussian noise and channel dropout of dense tiles ``[B, C, H, W]`` in [0, 1].

    Each channel is dropped (zeroed) with probability ``drop_p``, but never all channels of a tile.
    """
    b, c = x.shape[:2]
    gain = _uniform(b * c, 0.7, 1.3, gen).view(b, c, 1, 1)
    x = x * gain
    keep = torch.rand(b, c, generator=gen) >= drop_p
    none_kept = ~keep.any(dim=1)
    if none_kept.any():  # keep one random channel for tiles that lost all of them
        pick = torch.randint(0, c, (b,), generator=gen)
        keep[none_kept, pick[none_kept]] = True
    x = x * keep.view(b, c, 1, 1).to(x.dtype)
    x = _noise(x, gen, noise_p, 0.05)
    return x.clamp(0, 1)


def _noise(x: torch.Tensor, gen: torch.Generator, p: float, sigma: float) -> torch.Tensor:
    b = x.shape[0]
    on = (torch.rand(b, generator=gen) < p).to(x.dtype).view(b, 1, 1, 1)
    return x + on * sigma * torch.randn(x.shape, generator=gen)


def augment_pair(
    a: torch.Tensor,
    b: torch.Tensor,
    jitter_a: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    jitter_b: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    gen: torch.Generator,
    shared_geometry: bool = False,
    crop_scale: tuple[float, float] = (0.75, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views ``[B, C_a, H, W]`` and ``[B, C_b, H, W]``: geometry then branch-specific jitter.

    Every parameter is drawn per sample and per branch; with ``shared_geometry`` both branches of a pair
    get the same warp (pixel alignment kept), the photometric parameters stay independent.
    """
    ta = draw_geometry(a.shape[0], gen, crop_scale)
    tb = ta if shared_geometry else draw_geometry(b.shape[0], gen, crop_scale)
    va = jitter_a(apply_geometry(a, ta), gen)
    vb = jitter_b(apply_geometry(b, tb), gen)
    return va, vb
