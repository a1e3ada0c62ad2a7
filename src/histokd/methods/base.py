"""What every training method gives back, the method registry, and model folders.

A *method* owns its losses and stages (teacher, student, mining, role swaps). It is registered by
name (``@register_method("weno")``) and picked with ``histokd train --method NAME``.
``fit(train, val, config) -> Labeler``; a :class:`Labeler` predicts one bag at a time and saves to /
loads from a model folder (contract 7): ``model.pt`` (state dicts only), ``config.yaml`` (``method``,
``config`` and what is needed to rebuild: ``in_dim``, ``classes``), ``classes.json``.

A method class sets ``config_cls`` (its pydantic config, ``extra="forbid"``, in its own file) and
``labeler_cls``; the seed and the training-log path reach ``fit`` as ``self.seed`` / ``self.log_path``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from histokd.config import BaseConfig, read_yaml, write_yaml
from histokd.errors import ModelError
from histokd.registry import Registry
from histokd.workspace import write_json


@dataclass
class Prediction:
    bag_probs: np.ndarray  # [C]
    instance_probs: np.ndarray  # [N, C] (student or model instance probabilities; rows sum to 1)
    instance_scores: np.ndarray | None = None  # [N] raw teacher evidence (attention etc.), for heatmaps
    mask: np.ndarray | None = None  # [H, W] pixel mask where the method segments


class Labeler(ABC):
    """A trained method: labels bags and, for distilled students, single instances."""

    method: str = ""
    classes: list[str]

    @abstractmethod
    def predict(self, features: np.ndarray) -> Prediction:
        """``features`` [N, D] of one bag -> :class:`Prediction`."""

    @abstractmethod
    def save(self, directory: str | Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> "Labeler": ...


class Method(ABC):
    """A training recipe. ``config_cls`` is its config; ``labeler_cls`` loads what ``fit`` returns."""

    name: str = ""
    config_cls: ClassVar[type[BaseConfig]] = BaseConfig
    labeler_cls: ClassVar[type[Labeler]]

    def __init__(self, seed: int = 0, log_path: str | Path | None = None) -> None:
        self.seed = seed
        self.log_path = log_path

    @abstractmethod
    def fit(self, train: Any, val: Any, config: Any) -> Labeler: ...


METHODS: Registry[type[Method]] = Registry("method")
register_method = METHODS.register


def write_model_meta(directory: str | Path, method: str, config: BaseConfig | dict[str, Any], classes: list[str],
                     **extra: Any) -> None:
    """Write ``config.yaml`` (method, config and ``extra`` such as in_dim) and ``classes.json``."""
    import histokd

    directory = Path(directory)
    cfg = config.model_dump(mode="json") if isinstance(config, BaseConfig) else dict(config)
    meta = {"method": method, "histokd_version": histokd.__version__, "classes": list(classes), **extra,
            "config": cfg}
    write_yaml(directory / "config.yaml", meta)
    write_json(directory / "classes.json", list(classes))


def read_model_meta(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / "config.yaml"
    if not path.exists():
        raise ModelError(f"{directory}: not a model folder (no config.yaml); train one with `histokd train`")
    meta = read_yaml(path)
    if "method" not in meta:
        raise ModelError(f"{path}: no 'method' key; the model folder is damaged, retrain it")
    cpath = directory / "classes.json"
    if "classes" not in meta and cpath.exists():
        meta["classes"] = json.loads(cpath.read_text())
    return meta


def load_labeler(directory: str | Path) -> Labeler:
    """Load any trained method's :class:`Labeler` from its model folder (contract 7)."""
    import histokd.methods  # noqa: F401  (registers the built-in methods)

    meta = read_model_meta(directory)
    return METHODS.get(meta["method"]).labeler_cls.load(directory)
