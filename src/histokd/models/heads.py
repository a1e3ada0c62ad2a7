"""Instance heads: small MLPs mapping one tile's features to class logits (students, probes)."""

from __future__ import annotations

import torch
from torch import nn

from histokd.models.base import mlp


class InstanceMLP(nn.Module):
    """``x`` [..., D] -> logits [..., C]: Linear-ReLU-Dropout blocks then a linear classifier."""

    def __init__(self, in_dim: int, n_classes: int = 2, hidden: list[int] = [256], dropout: float = 0.25) -> None:  # noqa: B006
        super().__init__()
        self.body, d = mlp(in_dim, hidden, dropout)
        self.classifier = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))
