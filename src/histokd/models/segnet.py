"""Small segmentation networks for IFKD, trainable on CPU at a low working resolution (8-16 µm/px).

Both nets map an RGB image ``[B, 3, H, W]`` (float, normalised) to :class:`SegOutput`:
``side_logits`` (list of ``[B, 1, H, W]`` logits, one per output head) and ``fused`` ``[B, 1, H, W]``
probabilities in (0, 1). ``H`` and ``W`` must be multiples of ``net.stride`` (pad before calling).

* ``sidenet``: a multi-side-output CNN in the spirit of the IKD-MIL network (three conv stages with
  BatchNorm + ReLU and 2x2 max-pooling, a 1x1 side head per stage upsampled to full size); the fused
  map is a weighted sum of the side *probabilities*, ``f = Σ_i w_i σ(s_i)`` with ``Σ w_i = 1``.
  We train it from scratch (no ImageNet VGG here: torchvision does not import in this environment).
* ``unet``: a compact U-Net (encoder-decoder with skip connections); one output, ``fused = σ(logit)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from histokd.registry import Registry


@dataclass
class SegOutput:
    side_logits: list[torch.Tensor]  # each [B, 1, H, W]
    fused: torch.Tensor  # [B, 1, H, W] probability


SEGNETS: Registry[type[nn.Module]] = Registry("segmentation network")


def _conv_block(cin: int, cout: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


@SEGNETS.register("sidenet")
class SideOutputNet(nn.Module):
    """Multi-side-output CNN: stage ``i`` sees the image at 1/2^i and emits a full-size side map."""

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64),
        convs_per_stage: Sequence[int] = (2, 2, 3),
        fuse_weights: Sequence[float] | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(widths) != len(convs_per_stage):
            raise ValueError("widths and convs_per_stage must have the same length")
        n = len(widths)
        if fuse_weights is None:
            # the IKD-MIL fusion for three stages is (0.3, 0.3, 0.4): the deepest stage weighs most
            fuse_weights = (0.3, 0.3, 0.4) if n == 3 else tuple([1.0 / n] * n)
        if len(fuse_weights) != n or min(fuse_weights) < 0 or sum(fuse_weights) <= 0:
            raise ValueError(f"fuse_weights must be {n} non-negative numbers with a positive sum")
        w = torch.tensor([float(x) for x in fuse_weights])
        self.register_buffer("fuse_weights", w / w.sum())
        self.stages = nn.ModuleList()
        self.heads = nn.ModuleList()
        cin = in_channels
        for cout, k in zip(widths, convs_per_stage, strict=True):
            self.stages.append(_conv_block(cin, cout, k))
            self.heads.append(nn.Conv2d(cout, 1, 1))
            cin = cout
        self.stride = 2 ** (n - 1)

    def forward(self, x: torch.Tensor) -> SegOutput:
        h, w = x.shape[-2:]
        sides = []
        feat = x
        for i, (stage, head) in enumerate(zip(self.stages, self.heads, strict=True)):
            if i > 0:
                feat = F.max_pool2d(feat, 2)
            feat = stage(feat)
            s = head(feat)
            if s.shape[-2:] != (h, w):
                s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
            sides.append(s)
        probs = torch.stack([torch.sigmoid(s) for s in sides], 0)  # [S, B, 1, H, W]
        fused = (probs * self.fuse_weights.view(-1, 1, 1, 1, 1)).sum(0)
        return SegOutput(sides, fused)


@SEGNETS.register("unet")
class UNet(nn.Module):
    """Compact U-Net: ``len(widths)`` resolutions, two 3x3 convs per block, bilinear up + skip."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), in_channels: int = 3, **_: object) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        cin = in_channels
        for c in widths:
            self.down.append(_conv_block(cin, c, 2))
            cin = c
        self.up = nn.ModuleList()
        for c_skip in reversed(widths[:-1]):
            self.up.append(_conv_block(cin + c_skip, c_skip, 2))
            cin = c_skip
        self.head = nn.Conv2d(cin, 1, 1)
        self.stride = 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor) -> SegOutput:
        skips = []
        feat = x
        for i, block in enumerate(self.down):
            if i > 0:
                feat = F.max_pool2d(feat, 2)
            feat = block(feat)
            skips.append(feat)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            feat = F.interpolate(feat, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            feat = block(torch.cat([feat, skip], 1))
        logit = self.head(feat)
        return SegOutput([logit], torch.sigmoid(logit))


def build_segnet(name: str, widths: Sequence[int], fuse_weights: Sequence[float] | None = None) -> nn.Module:
    """Build a registered segmentation net by name (``sidenet`` or ``unet``)."""
    cls = SEGNETS.get(name)
    if name == "sidenet":
        convs = tuple([2] * (len(widths) - 1) + [3])
        return cls(widths=tuple(widths), convs_per_stage=convs, fuse_weights=fuse_weights)
    return cls(widths=tuple(widths))
