"""Small CNN encoders for tiles (ResNet-18 size at most) and MLP projector heads.

These are the backbones that histokd trains itself (More From Less, H&E-only SSL). They are fully
convolutional up to a global average pool, so an encoder trained on 64 px tiles also embeds larger tiles.
Architectures are registered by name (``CNN_ARCHS``) so that a config names one and the model folder can
rebuild it.

Shapes: ``SmallResNet.forward(x [B, C_in, H, W]) -> [B, D]`` with ``D = widths[-1]``;
``Projector.forward(h [B, D]) -> [B, P]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from histokd.registry import Registry


@dataclass(frozen=True)
class CNNArch:
    """Width and depth of each stage; ``stem_stride`` 2 halves the input once before the first stage."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    stem_stride: int = 2
    stem_pool: bool = False


CNN_ARCHS: Registry[CNNArch] = Registry("CNN architecture")
# ~0.31 M parameters: trains on 2 CPU cores in minutes on 64-96 px tiles (the default).
CNN_ARCHS.register("tiny")(CNNArch(widths=(16, 32, 64, 128), depths=(1, 1, 1, 1)))
# ~1.2 M parameters.
CNN_ARCHS.register("small")(CNNArch(widths=(32, 64, 128, 256), depths=(1, 1, 1, 1)))
# The ResNet-18 layout (11 M parameters): the upper bound of what is reasonable on CPU.
CNN_ARCHS.register("resnet18")(
    CNNArch(widths=(64, 128, 256, 512), depths=(2, 2, 2, 2), stem_stride=2, stem_pool=True)
)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet of basic blocks: ``[B, in_channels, H, W] -> [B, widths[-1]]`` (global average pool)."""

    def __init__(self, in_channels: int = 3, arch: str | CNNArch = "tiny") -> None:
        super().__init__()
        spec = CNN_ARCHS.get(arch) if isinstance(arch, str) else arch
        self.in_channels = in_channels
        self.arch = arch if isinstance(arch, str) else "custom"
        w0 = spec.widths[0]
        stem: list[nn.Module] = [
            nn.Conv2d(in_channels, w0, 3, stride=spec.stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
        ]
        if spec.stem_pool:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        layers: list[nn.Module] = []
        c = w0
        for i, (w, d) in enumerate(zip(spec.widths, spec.depths, strict=True)):
            for j in range(d):
                layers.append(BasicBlock(c, w, stride=2 if (i > 0 and j == 0) else 1))
                c = w
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dim = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C_in, H, W] (normalised) -> ``[B, D]``."""
        return self.pool(self.stages(self.stem(x))).flatten(1)


class Projector(nn.Module):
    """VICReg / Barlow Twins expander: (Linear-BN-ReLU) x ``n_hidden`` then Linear. ``[B, D] -> [B, P]``."""

    def __init__(self, in_dim: int, hidden: int = 512, out_dim: int = 512, n_hidden: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(n_hidden):
            layers += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            d = hidden
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
