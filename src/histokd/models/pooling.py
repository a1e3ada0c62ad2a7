"""Mean- and max-pooling MIL baselines over instance logits.

An instance MLP embeds each tile and a linear classifier gives instance logits [B, N, C]; the bag logit
is the masked mean (``meanpool``) or max (``maxpool``) of the instance logits. Because the classifier is
linear, mean-pooling logits equals classifying the mean embedding. The instance logits are the heatmap.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from histokd.config import BaseConfig
from histokd.models.base import MILModel, MILOutput, PackedSpec, full_mask, masked_max, masked_mean, mlp, register_model


class _PoolArgs(BaseConfig):
    hidden: list[int] = [128]
    dropout: float = 0.25


class _InstancePool(MILModel):
    Args = _PoolArgs

    def __init__(self, in_dim: int, n_classes: int = 2, hidden: list[int] = [128], dropout: float = 0.25) -> None:  # noqa: B006
        super().__init__(in_dim, n_classes)
        self.embed, d = mlp(in_dim, hidden, dropout)
        self.classifier = nn.Linear(d, n_classes)

    pooling = ""  # mean | max: the packed engine's name for _pool

    def packed_spec(self) -> PackedSpec | None:
        return PackedSpec(self.embed, self.classifier, self.pooling)

    @abstractmethod
    def _pool(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ...

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """``x`` [B, N, D] -> bag logits [B, C], instance scores = instance logits [B, N, C]."""
        mask = full_mask(x) if mask is None else mask
        inst = self.classifier(self.embed(x))
        return MILOutput(self._pool(inst, mask), inst)

    @torch.no_grad()
    def instance_logits(self, x: torch.Tensor, mask: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_model("meanpool")
class MeanPool(_InstancePool):
    pooling = "mean"

    def _pool(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(logits, mask)


@register_model("maxpool")
class MaxPool(_InstancePool):
    pooling = "max"

    def _pool(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_max(logits, mask)
