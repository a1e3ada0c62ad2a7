"""The one contract every MIL model follows.

``forward(x [B, N, D], mask [B, N] bool) -> MILOutput``. ``mask`` is True for real instances and False
for padding, so bags of different sizes batch together. Every model returns instance scores
(attention, top-k scores, instance logits) so that every model can draw a heatmap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class MILOutput:
    bag_logits: torch.Tensor  # [B, C]
    instance_scores: torch.Tensor  # [B, N] or [B, N, C]; padding positions are undefined
    extras: dict[str, Any] = field(default_factory=dict)


class MILModel(nn.Module):
    """Base class: subclasses implement ``forward``; ``in_dim``/``n_classes`` are stored for save/load."""

    def __init__(self, in_dim: int, n_classes: int = 2) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:  # pragma: no cover
        raise NotImplementedError

    def loss_extra(self, out: MILOutput, y: torch.Tensor) -> torch.Tensor | None:
        """Model-specific auxiliary loss (e.g. CLAM's instance clustering); ``None`` if none."""
        return None


def full_mask(x: torch.Tensor) -> torch.Tensor:
    """All-True mask for an unpadded batch ``x`` [B, N, D]."""
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` ignoring padded positions (mask False)."""
    logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=dim) * mask
