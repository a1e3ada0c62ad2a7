"""What every training method gives back, and the method registry.

A *method* owns its losses and stages (teacher, student, mining, role swaps). It is registered by
name (``@register_method("weno")``) and picked with ``histokd train --method NAME``.
``fit(train, val, config) -> Labeler``; a :class:`Labeler` predicts one bag at a time and saves to /
loads from a model folder (``model.pt`` state dicts, ``config.yaml``, ``classes.json``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histokd.registry import Registry


@dataclass
class Prediction:
    bag_probs: np.ndarray  # [C]
    instance_probs: np.ndarray  # [N, C] (student or model instance probabilities; rows sum to 1)
    instance_scores: np.ndarray | None = None  # [N] raw teacher evidence (attention etc.), for heatmaps
    mask: np.ndarray | None = None  # [H, W] pixel mask where the method segments


class Labeler(ABC):
    """A trained method: labels bags and, for distilled students, single instances."""

    method: str = ""

    @abstractmethod
    def predict(self, features: np.ndarray) -> Prediction:
        """``features`` [N, D] of one bag -> :class:`Prediction`."""

    @abstractmethod
    def save(self, directory: str | Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> "Labeler": ...


class Method(ABC):
    """A training recipe."""

    name: str = ""

    @abstractmethod
    def fit(self, train: Any, val: Any, config: Any) -> Labeler: ...


METHODS: Registry[type[Method]] = Registry("method")
register_method = METHODS.register
