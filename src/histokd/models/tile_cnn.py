"""A small CNN on tile pixels: the shared encoder of end-to-end WENO (``encoder=cnn``).

``TileCNN.forward(x [..., 3, H, W] uint8 or float in [0, 255], mask [...] bool | None) -> [..., E]``:
the same calling convention as :class:`histokd.models.student.ProjectionEncoder`, so WENO's teacher
(on padded bags ``[B, N, 3, H, W]``) and student (on instance batches ``[M, 3, H, W]``) use it alike.

Choices, for a CPU and for MIL training:

- **GroupNorm, not BatchNorm**: WENO's teacher sees one slide per step, and batch statistics over one
  slide normalise a tumour-rich slide's tumour away (and differ between the teacher pass, the student
  pass and prediction). GroupNorm normalises each tile on its own.
- **Strided convolutions** from the first layer: a 64 px tile costs ~3.5 M multiply-adds (``tiny``),
  so a few thousand tiles per epoch train in seconds on two cores.
- Input scaling inside the model (``x / 255`` then a fixed H&E-ish mean/std), so tiles are stored as
  uint8 (12 KiB per 64 px tile) and nothing needs to be saved beside the weights.

Architectures are registered by name in ``TILE_CNN_ARCHS`` so that the model folder can rebuild them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from histokd.registry import Registry


@dataclass(frozen=True)
class TileCNNArch:
    """Output channels and stride of each 3x3 convolution (each followed by GroupNorm + ReLU)."""

    widths: tuple[int, ...]
    strides: tuple[int, ...]


TILE_CNN_ARCHS: Registry[TileCNNArch] = Registry("tile CNN architecture")
# ~70 k parameters, ~3.5 M multiply-adds per 64 px tile.
TILE_CNN_ARCHS.register("tiny")(TileCNNArch(widths=(16, 32, 64, 64), strides=(2, 2, 2, 1)))
# ~0.3 M parameters, ~15 M multiply-adds per 64 px tile.
TILE_CNN_ARCHS.register("small")(TileCNNArch(widths=(32, 64, 128, 128), strides=(2, 2, 2, 1)))

# mean / std of RGB in [0, 1] for H&E-like tiles (pink-purple on white); fixed so that no statistics
# have to be estimated or stored.
_MEAN = (0.75, 0.60, 0.72)
_STD = (0.15, 0.18, 0.14)


def _groups(c: int) -> int:
    for g in (8, 4, 2):
        if c % g == 0:
            return g
    return 1


class TileCNN(nn.Module):
    """``[..., 3, H, W]`` tiles -> ``[..., out_dim]`` embeddings (ReLU'd, like the projection encoder)."""

    def __init__(self, out_dim: int = 128, arch: str = "tiny", in_channels: int = 3) -> None:
        super().__init__()
        spec = TILE_CNN_ARCHS.get(arch)
        self.arch, self.out_dim, self.in_channels = arch, out_dim, in_channels
        layers: list[nn.Module] = []
        c = in_channels
        for w, s in zip(spec.widths, spec.strides, strict=True):
            layers += [nn.Conv2d(c, w, 3, stride=s, padding=1, bias=False), nn.GroupNorm(_groups(w), w),
                       nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c, out_dim), nn.ReLU())
        self.register_buffer("mean", torch.tensor(_MEAN[:in_channels] if in_channels == 3 else [0.5] * in_channels)
                             .view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD[:in_channels] if in_channels == 3 else [0.25] * in_channels)
                             .view(1, -1, 1, 1), persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [..., C, H, W] (uint8 or float, 0-255); ``mask`` [...] bool = real tiles (others -> 0)."""
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:])
        if mask is None:
            return self._encode(flat).reshape(*lead, self.out_dim)
        keep = mask.reshape(-1)
        z = torch.zeros(flat.shape[0], self.out_dim, dtype=torch.float32, device=x.device)
        if bool(keep.any()):
            z[keep] = self._encode(flat[keep])
        return z.reshape(*lead, self.out_dim)

    def _encode(self, flat: torch.Tensor) -> torch.Tensor:
        x = (flat.float() / 255.0 - self.mean) / self.std
        return self.head(self.features(x).mean((-2, -1)))
