"""Prediction files, ``RUN/predictions/<id>/<slide>.h5`` (contract 7): the one module that writes and reads them.

Datasets: ``instance_probs`` (N, C) float32, ``coords`` (N, 2) int64, optional ``instance_scores`` (N,)
float32 (raw teacher evidence), optional ``mask`` (H, W) uint8 with attr ``mask_downsample``. Attrs:
``bag_probs`` (C,), ``classes`` (JSON list), ``positive_class``, ``model_id``, ``method``,
``patch_size_level0``, ``slide_id``. Written atomically.

It sits on the bottom floor, next to :mod:`histokd.workspace` (which names the path): every reader is
above it, IFKD's pseudo-masks in ``segmentation/`` included, as :mod:`histokd.features.store` is for
features.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histokd.classes import stored_positive_class
from histokd.errors import InputError
from histokd.workspace import atomic_path


@dataclass
class SlidePrediction:
    """One prediction file read back."""

    slide_id: str
    coords: np.ndarray  # [N, 2] int64 level-0 top-left (x, y)
    probs: np.ndarray  # [N, C] float32
    classes: list[str]
    patch_size_level0: float
    bag_probs: np.ndarray  # [C]
    scores: np.ndarray | None = None  # [N] raw teacher evidence
    mask: np.ndarray | None = None  # [H, W] uint8 pixel mask
    mask_downsample: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def positive(self) -> int:
        """Index of the positive class: the one stored with the model (attr ``positive_class``)."""
        return stored_positive_class(self.classes, self.attrs.get("positive_class"))


def write_prediction(path: str | os.PathLike[str], pred: Any, coords: np.ndarray, attrs: dict[str, Any]) -> Path:
    """One slide's prediction file, atomically. ``pred`` has ``bag_probs`` [C], ``instance_probs`` [N, C],
    ``instance_scores`` [N] or None, ``mask`` [H, W] or None (+ ``mask_downsample``); ``attrs`` are written
    as file attributes (None values left out; a ``classes`` list is stored as JSON)."""
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("instance_probs", data=np.asarray(pred.instance_probs, np.float32))
        f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        if pred.instance_scores is not None:
            f.create_dataset("instance_scores", data=np.asarray(pred.instance_scores, np.float32).reshape(-1))
        if pred.mask is not None:
            d = f.create_dataset("mask", data=np.asarray(pred.mask, np.uint8), compression="gzip")
            ds = getattr(pred, "mask_downsample", None)
            d.attrs["mask_downsample"] = float(ds if ds is not None else attrs.get("mask_downsample", 1.0))
            f.attrs["mask_downsample"] = d.attrs["mask_downsample"]
        f.attrs["bag_probs"] = np.asarray(pred.bag_probs, np.float32)
        for k, v in attrs.items():
            if v is not None:
                f.attrs[k] = json.dumps(list(v)) if k == "classes" and not isinstance(v, str) else v
    return path


def is_prediction_of(path: str | os.PathLike[str], model_id: str, source_key: str | None = None) -> bool:
    """Whether ``path`` is a complete prediction file of ``model_id`` (resume: such a file is read back).

    ``source_key`` (see :func:`source_key`) also ties it to the model's weights and the slide's features,
    so a model retrained under the same id, or a slide re-embedded, is predicted again."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            ok = f.attrs.get("model_id") == model_id and "instance_probs" in f
            return ok and (source_key is None or f.attrs.get("source_key") == source_key)
    except OSError:
        return False


def source_key(weights_sha256: str, features: str | os.PathLike[str] | None) -> str:
    """What a prediction was made from: the model weights' sha256 (computed once per run by the caller,
    :func:`histokd.workspace.file_sha256`) and the feature file's size and modification time (a rewrite of
    either changes the key)."""
    st = os.stat(features) if features is not None and os.path.exists(features) else None
    return f"{weights_sha256[:32]}:{st.st_size if st else 0}:{st.st_mtime_ns if st else 0}"


def read_prediction(path: str | os.PathLike[str]) -> SlidePrediction:
    """Read one prediction file; a damaged or incomplete file raises a one-line :class:`InputError`."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: attr_value(v) for k, v in f.attrs.items()}
            probs = np.asarray(f["instance_probs"][()], dtype=np.float32)
            coords = np.asarray(f["coords"][()], dtype=np.int64)
            scores = np.asarray(f["instance_scores"][()], dtype=np.float32) if "instance_scores" in f else None
            mask, mds = None, None
            if "mask" in f:
                mask = np.asarray(f["mask"][()])
                mds = float(f["mask"].attrs.get("mask_downsample", attrs.get("mask_downsample", 0)) or 0) or None
    except (OSError, KeyError) as e:
        raise InputError(f"{path}: unreadable prediction file ({e}); run `histokd label` again") from None
    if probs.ndim == 1:
        probs = np.stack([1 - probs, probs], axis=1)
    classes = attrs.get("classes")
    if isinstance(classes, str):
        classes = json.loads(classes)
    classes = [str(c) for c in (classes or [f"class{i}" for i in range(probs.shape[1])])]
    if probs.shape[0] != coords.shape[0] or probs.shape[1] != len(classes):
        raise InputError(
            f"{path}: instance_probs {probs.shape} does not match coords {coords.shape} / {len(classes)} classes; "
            f"run `histokd label` again"
        )
    if mask is not None and mds is None:
        raise InputError(f"{path}: dataset 'mask' has no attr 'mask_downsample'; run `histokd label` again")
    bag = np.asarray(attrs.get("bag_probs", probs.mean(axis=0) if len(probs) else np.zeros(len(classes))), np.float32)
    return SlidePrediction(
        slide_id=str(attrs.get("slide_id") or path.stem),
        coords=coords,
        probs=probs,
        classes=classes,
        patch_size_level0=float(attrs.get("patch_size_level0", 0) or 0),
        bag_probs=bag.reshape(-1),
        scores=scores,
        mask=mask,
        mask_downsample=mds,
        attrs=attrs,
    )


def attr_value(v: Any) -> Any:
    """An h5 attribute as plain Python (bytes -> str, arrays -> lists, numpy scalars -> numbers)."""
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray):
        return v.tolist() if v.dtype.kind != "S" else [x.decode() for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v
