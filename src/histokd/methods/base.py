"""What every training method gives back, the method registry, and model folders.

A *method* owns its losses and stages (teacher, student, mining, role swaps). It is registered by
name (``@register_method("weno")``) and picked with ``histokd train --method NAME``.
``fit(train, val, config) -> Labeler``; a :class:`Labeler` predicts one bag at a time and saves to /
loads from a model folder (contract 7): ``model.pt`` (state dicts only), ``config.yaml`` (``method``,
``config`` and what is needed to rebuild: ``in_dim``, ``classes``, ``positive_class``), ``classes.json``.

A method class sets ``config_cls`` (its pydantic config, ``extra="forbid"``, in its own file) and
``labeler_cls``; the seed, the training-log path and the held-out bags (reporting only) reach ``fit`` as
``self.seed`` / ``self.log_path`` / ``self.held_out``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from histokd.classes import positive_class, stored_positive_class
from histokd.config import BaseConfig, read_yaml, write_yaml
from histokd.errors import ModelError, one_line
from histokd.registry import Registry
from histokd.workspace import ModelFiles, write_json


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
    # What the pipeline may read of every labeller, declared here with their defaults (a labeller that has
    # one sets it), so that no caller probes attribute names:
    #: what the labeller stores with its weights (its ``config.yaml`` fields); None where it keeps none
    meta: dict[str, Any] | None = None
    #: the slide cut chosen at fit (:mod:`histokd.methods.decision`); None where it has none
    decision: dict[str, Any] | None = None
    #: the epoch loop's record of the fit that made it (``engine.epochs.fit_epochs``); None where it ran none
    best_epoch: int | None = None
    history: list[dict[str, Any]] | None = None

    @abstractmethod
    def predict(self, features: np.ndarray) -> Prediction:
        """``features`` [N, D] of one bag -> :class:`Prediction`."""

    @abstractmethod
    def save(self, directory: str | Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> "Labeler": ...


# What a labeller can do beyond :meth:`Labeler.predict`, declared here once with its signature; the pipeline
# asks ``isinstance(labeler, SlideLabeler)`` instead of probing attribute names.


@runtime_checkable
class SlideLabeler(Protocol):
    """Labels a slide from its pixels (segmenters: IFKD, end-to-end WENO): the pipeline hands it the slide
    (a :class:`~histokd.data.slide_source.SlideSource`: file, tiling mpp, mask), the bag's features [N, D] (or
    None), the tile ``coords`` [N, 2] level-0 px and the tile side in level-0 px; it returns a
    :class:`Prediction` (with ``mask`` where it segments)."""

    def predict_slide(self, slide: Any, features: np.ndarray | None, coords: np.ndarray,
                      patch_size_level0: float) -> Prediction: ...


@runtime_checkable
class PixelBagLabeler(Protocol):
    """Predicts bag ``i`` of a dataset by reading its tiles itself (models on pixels, end-to-end WENO)."""

    def predict_bag(self, ds: Any, i: int) -> Prediction: ...


@runtime_checkable
class TeacherBagScorer(Protocol):
    """A distilled student that also gives its teacher's own bag probabilities [C] for features [N, D]."""

    def teacher_bag_probs(self, features: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class SingletonTeacher(Protocol):
    """A teacher that scores every instance as a bag of one: features [N, D] -> probabilities [N, C]
    (Distill-to-Label)."""

    def teacher_singleton_probs(self, features: np.ndarray) -> np.ndarray: ...


class Method(ABC):
    """A training recipe. ``config_cls`` is its config; ``labeler_cls`` loads what ``fit`` returns."""

    name: str = ""
    config_cls: ClassVar[type[BaseConfig]] = BaseConfig
    labeler_cls: ClassVar[type[Labeler]]

    def __init__(self, seed: int = 0, log_path: str | Path | None = None, held_out: Any = None) -> None:
        self.seed = seed
        self.log_path = log_path
        # bags the method may *report* on after fitting (``histokd train`` passes the test split); never
        # used to choose anything. Only methods that write their own held-out metrics (IFKD) read it.
        self.held_out = held_out

    @abstractmethod
    def fit(self, train: Any, val: Any, config: Any) -> Labeler: ...

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Refuse, with one line, a valid config this method cannot run (before any data is read): e.g. a
        runtime its one-process loop cannot honour (:func:`histokd.engine.runtime.single_process`)."""

    @classmethod
    def side_by_side(cls, config: Any, dim: int, n_classes: int) -> bool:
        """Whether :meth:`fit_many` trains its models side by side (so grouping folds pays); default False."""
        return False

    @classmethod
    def fit_many(cls, parts: Sequence[tuple[Any, Any, int]], config: Any) -> list[Labeler]:
        """One labeller per ``(train, val, seed)`` (a bench run's folds). Default: one after another; a
        method whose models can train side by side (the plain MIL teachers) overrides this."""
        return [cls(seed=seed).fit(train, val, config) for train, val, seed in parts]


METHODS: Registry[type[Method]] = Registry("method")
register_method = METHODS.register


def write_model_meta(directory: str | Path, method: str, config: BaseConfig | dict[str, Any], classes: list[str],
                     **extra: Any) -> None:
    """Write ``config.yaml`` (method, classes, the positive class, config and ``extra`` such as in_dim) and
    ``classes.json``. The positive class is decided here, once (:func:`histokd.classes.positive_class`), and
    read back by every later stage (:func:`model_positive_class`)."""
    import histokd

    directory = Path(directory)
    cfg = config.model_dump(mode="json") if isinstance(config, BaseConfig) else dict(config)
    extra.setdefault("positive_class", str(classes[positive_class(classes)]) if len(classes) else None)
    meta = {"method": method, "histokd_version": histokd.__version__, "classes": list(classes), **extra,
            "config": cfg}
    files = ModelFiles(directory)
    write_yaml(files.config, meta)
    write_json(files.classes, list(classes))


def read_model_meta(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = ModelFiles(directory).config
    if not path.exists():
        raise ModelError(f"{directory}: not a model folder (no config.yaml); train one with `histokd train`")
    meta = read_yaml(path)
    if "method" not in meta:
        raise ModelError(f"{path}: no 'method' key; the model folder is damaged, retrain it")
    cpath = ModelFiles(directory).classes
    if "classes" not in meta and cpath.exists():
        meta["classes"] = json.loads(cpath.read_text())
    return meta


def model_positive_class(meta: dict[str, Any]) -> int:
    """Index of the positive class of a model (its ``config.yaml`` read by :func:`read_model_meta`): the
    stored ``positive_class``; the rule for models trained before it was stored."""
    return stored_positive_class(list(meta.get("classes") or []), meta.get("positive_class"))


def load_model_state(directory: str | Path, retrain: str = "`histokd train ... --overwrite`") -> dict[str, Any]:
    """``directory/model.pt`` loaded with ``torch.load(weights_only=True)``: a dict of tensors / state dicts.

    A missing, damaged or tampered file (not a torch archive, a pickle that is more than weights, a
    truncated archive) raises a one-line :class:`ModelError` naming the file and the fix (retrain with
    ``retrain``) instead of torch's ``UnpicklingError`` / ``RuntimeError``. Nothing in the file is run.
    """
    import torch

    path = ModelFiles(directory).weights
    if not path.is_file():
        raise ModelError(f"{path}: model file missing; retrain with {retrain}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        first = one_line((str(e).strip().splitlines() or [""])[0])
        raise ModelError(
            f"{path}: not a valid histokd model file ({type(e).__name__}: {first}); it was damaged or changed "
            f"after `histokd train` wrote it: retrain with {retrain}, or restore the file from a backup"
        ) from None
    if not isinstance(state, dict):
        raise ModelError(
            f"{path}: holds a {type(state).__name__}, not the state dicts `histokd train` writes; retrain with {retrain}"
        )
    return state


def load_labeler(directory: str | Path) -> Labeler:
    """Load any trained method's :class:`Labeler` from its model folder (contract 7)."""
    import histokd.methods  # noqa: F401  (registers the built-in methods)

    meta = read_model_meta(directory)
    return METHODS.get(meta["method"]).labeler_cls.load(directory)
