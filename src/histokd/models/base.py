"""The one contract every MIL model follows, and the model registry.

``forward(x [B, N, D], mask [B, N] bool) -> MILOutput``. ``mask`` is True for real instances and False
for padding, so bags of different sizes batch together. Every model returns instance scores
(attention, top-k scores, instance logits) so that every model can draw a heatmap.

A model declares its hyper-parameters as a nested pydantic ``Args`` class (unknown keys are errors), and
is built by name with :func:`build_model`, so that a saved ``config.yaml`` is enough to rebuild it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from histokd.config import BaseConfig, validate_config
from histokd.registry import Registry


@dataclass
class MILOutput:
    bag_logits: torch.Tensor  # [B, C]
    instance_scores: torch.Tensor  # [B, N] or [B, N, C]; padding positions are undefined
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class PackedSpec:
    """A model's parts in the form the packed / stacked engine (:mod:`histokd.engine.packed`) runs: an instance
    encoder of linear and element-wise layers, then ``pooling``: ``attention`` (ABMIL: logit
    ``attention_out(dropout(tanh(attention(h)) * sigmoid(gate(h))))``, softmax per bag, weighted sum of h,
    ``classifier``), or ``mean`` / ``max`` of the instance logits ``classifier(h)``."""

    encoder: nn.Sequential
    classifier: nn.Linear
    pooling: str  # attention | mean | max
    attention: nn.Linear | None = None
    gate: nn.Linear | None = None
    attention_out: nn.Linear | None = None
    attention_dropout: nn.Module | None = None


class MILModel(nn.Module, ABC):
    """Base class: subclasses implement ``forward``; ``in_dim``/``n_classes`` are stored for save/load.

    Hooks a training loop calls: :meth:`bag_loss` (default: weighted cross-entropy on ``bag_logits``) and
    :meth:`loss_extra` (auxiliary terms such as CLAM's clustering loss or CHOWDER's L2). Prediction of
    instance probabilities uses :meth:`instance_logits`.
    """

    class Args(BaseConfig):
        """Hyper-parameters; subclasses extend this."""

    #: True when outputs do not depend on the order of the instances in the bag.
    permutation_invariant: ClassVar[bool] = True

    def __init__(self, in_dim: int, n_classes: int = 2) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_classes = n_classes

    @abstractmethod
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        ...

    def bag_loss(self, out: MILOutput, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Bag-level loss; ``y`` [B] class indices, ``weight`` [C] class weights."""
        return F.cross_entropy(out.bag_logits.float(), y, weight=weight)

    def loss_extra(self, out: MILOutput, y: torch.Tensor) -> torch.Tensor | None:
        """Model-specific auxiliary loss (e.g. CLAM's instance clustering); ``None`` if none."""
        return None

    def after_fit(self, bags: Iterable[tuple[torch.Tensor, int]], positive: int) -> None:
        """Hook run once after training, on the *training* bags only (``(features [N, D], label)`` pairs,
        standardised as in training): models whose instance scores have no identified sign (CHOWDER) orient
        them here. ``positive`` is the index of the positive class. Default: nothing."""

    def packed_spec(self) -> PackedSpec | None:
        """The model's parts for packed bags and side-by-side training (:class:`PackedSpec`); ``None`` (the
        default): the model trains through the padded-batch loop only."""
        return None

    @torch.no_grad()
    def instance_logits(self, x: torch.Tensor, mask: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        """Class logits of each instance seen alone, as a bag of one: [B, N, D] -> [B, N, C].

        This is the teacher's own instance classifier (what Distill-to-Label calls a singleton bag);
        models with a native instance classifier override it. Chunked so 100k-tile bags fit in memory.
        """
        B, N, D = x.shape
        flat = x.reshape(B * N, 1, D)
        out = [self.forward(flat[i : i + chunk]).bag_logits for i in range(0, B * N, chunk)]
        return torch.cat(out).reshape(B, N, -1)


MODELS: Registry[type[MILModel]] = Registry("model")
register_model = MODELS.register


def build_model(name: str, in_dim: int, n_classes: int, args: dict[str, Any] | BaseConfig | None = None) -> MILModel:
    """Build a registered model; ``args`` are validated against the model's ``Args`` (unknown keys refused)."""
    cls = MODELS.get(name)
    if isinstance(args, BaseConfig):
        args = args.model_dump()
    parsed = validate_config(cls.Args, args, source=f"model {name!r}")
    return cls(in_dim, n_classes, **parsed.model_dump())


def full_mask(x: torch.Tensor) -> torch.Tensor:
    """All-True mask for an unpadded batch ``x`` [B, N, D]."""
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` ignoring padded positions (mask False)."""
    logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=dim) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over instances of ``x`` [B, N, ...] counting only ``mask`` [B, N] positions -> [B, ...]."""
    m = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over instances of ``x`` [B, N, ...] ignoring padding -> [B, ...]."""
    m = mask.reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return x.masked_fill(~m, torch.finfo(x.dtype).min).amax(1)


def mlp(in_dim: int, hidden: list[int], dropout: float = 0.0, act: type[nn.Module] = nn.ReLU) -> tuple[nn.Sequential, int]:
    """Linear -> act -> dropout blocks; returns the module and its output width."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), act()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = h
    return nn.Sequential(*layers), d
