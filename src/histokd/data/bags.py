"""Bags of tile features with slide labels: datasets, padding collate, instance labels from masks.

A :class:`BagDataset` holds one entry per slide (bag): its features [N, D] (in memory, or read lazily from
``RUN/features/<enc>/<slide>.h5``), its class index, split, patient, coordinates and, where a tumour mask
exists, per-tile instance labels (contract 6: ``RUN/features/<enc>/instance_labels/<slide>.h5`` with
``tumour_fraction`` (N,) float32 and ``label`` (N,) int8, -1 where unknown).

Class names are strings; the order puts known negative names first (``normal`` = 0, ``tumour`` = 1) and
otherwise sorts (numerically when every label is a number). :func:`collate_bags` pads bags to the largest
in the batch with a boolean mask, so batches hold more than one bag.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from histokd.classes import class_names, positive_class  # the class rules, re-exported for their importers
from histokd.errors import FeatureError, InputError
from histokd.features.store import majority_dim
from histokd.data.instance_labels import (  # noqa: F401  (instance labels: re-exported for their importers)
    DEFAULT_TUMOUR_THRESHOLD,
    cohort_frame,
    ensure_instance_labels,
    instance_labels_path,
    known_value,
    read_instance_labels,
    write_instance_labels,
)
from histokd.data.slide_source import SlideSource
from histokd.workspace import Workspace, check_id

log = logging.getLogger("histokd")

PRELOAD_LIMIT_BYTES = 2 * 2**30


@dataclass
class Bag:
    """One slide: ``features`` [N, D] float32, ``label`` class index (-1 unknown), optional per-tile data."""

    features: torch.Tensor
    label: int
    slide_id: str
    coords: np.ndarray | None = None  # [N, 2] int64 level-0 px
    instance_labels: np.ndarray | None = None  # [N] int8, -1 unknown
    split: str | None = None


@dataclass
class BagBatch:
    """Padded batch: ``x`` [B, N, D], ``mask`` [B, N] bool (True = real tile), ``y`` [B] long,
    ``instance_labels`` [B, N] long (-1 for unknown and padding)."""

    x: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor
    instance_labels: torch.Tensor
    slide_ids: list[str]

    def to(self, device: torch.device | str) -> "BagBatch":
        return replace(self, x=self.x.to(device), mask=self.mask.to(device), y=self.y.to(device),
                       instance_labels=self.instance_labels.to(device))


def collate_bags(bags: Sequence[Bag]) -> BagBatch:
    """Pad bags to the largest one: zeros in ``x``, False in ``mask``, -1 in ``instance_labels``."""
    if not bags:
        raise ValueError("collate_bags: empty batch")
    n = max(len(b.features) for b in bags)
    d = bags[0].features.shape[1]
    x = torch.zeros(len(bags), n, d, dtype=bags[0].features.dtype)
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    inst = torch.full((len(bags), n), -1, dtype=torch.long)
    for i, b in enumerate(bags):
        k = len(b.features)
        x[i, :k] = b.features
        mask[i, :k] = True
        if b.instance_labels is not None:
            inst[i, :k] = torch.as_tensor(np.asarray(b.instance_labels, dtype=np.int64))
    y = torch.tensor([b.label for b in bags], dtype=torch.long)
    return BagBatch(x, mask, y, inst, [b.slide_id for b in bags])


@dataclass
class BagRecord:
    """Where one bag's data lives: in memory (``features``) or in a feature file (``path``)."""

    slide_id: str
    label: int
    split: str | None = None
    patient: str | None = None
    path: Path | None = None
    n: int = 0
    features: np.ndarray | None = None
    coords: np.ndarray | None = None
    instance_labels: np.ndarray | None = None
    instance_path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    slide: SlideSource | None = None  # the slide file (workspace bags whose cohort row gives a path)


def _bag_record(ws: Workspace, features: str, sid: str, path: Path, n: int, d: int, dim: int, row: dict[str, Any],
                classes: list[str], require_labels: bool) -> BagRecord | str:
    """The bag of one slide's feature file, or why it is left out (one line)."""
    if n == 0:
        return f"{path}: empty bag (0 tiles); check its tissue mask / tiling"
    if d != dim:
        return f"{path}: features are {d}-d but the feature set is {dim}-d; re-embed this slide"
    raw = row.get("label")
    if require_labels and not known_value(raw):
        return "no label in the cohort; fill its label column"
    if known_value(raw) and str(raw).strip() not in classes:
        if require_labels:
            return f"label {raw!r} is not one of the model's classes {classes}"
        # labelling needs no label: the slide is predicted, and left out of the metrics (label -1)
        log.warning("slide %s: label %r is not one of the model's classes %s; predicted, not evaluated",
                    sid, raw, classes)
        raw = None
    ipath = ws.instance_labels_h5(features, sid)
    return BagRecord(
        slide_id=sid, label=_to_index(raw, classes) if known_value(raw) else -1,
        split=_opt_str(row.get("split")), patient=_opt_str(row.get("patient_id", row.get("patch_id"))),
        path=path, n=n, instance_path=ipath if ipath.exists() else None,
        slide=_slide_of(ws, sid, row),
    )


def _slide_of(ws: Workspace, sid: str, row: dict[str, Any]) -> SlideSource | None:
    """The slide of a cohort row, with the level-0 µm/px it was tiled with (``RUN/tiles/<slide>.h5``)."""
    if not known_value(row.get("path")):
        return None
    from histokd.slides.tiling import tiled_level0_mpp

    mpp = row.get("level0_mpp") if known_value(row.get("level0_mpp")) else tiled_level0_mpp(ws.tiles_h5(sid))
    return SlideSource.of({**row, "level0_mpp": mpp}, sid)


class BagDataset(Dataset):
    """A list of bags with class names. ``ds[i]`` -> :class:`Bag`.

    Build with :meth:`from_arrays` (in memory: benchmarks, tests) or :meth:`from_workspace` (feature files
    plus a cohort). Slides that cannot be used are left out with a warning and listed in ``skipped``.
    """

    def __init__(self, records: list[BagRecord], classes: list[str], dim: int,
                 skipped: dict[str, str] | None = None) -> None:
        self.records = records
        self.classes = list(classes)
        self.dim = int(dim)
        self.skipped = dict(skipped or {})

    # construction ------------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        features: Sequence[np.ndarray],
        labels: Sequence[Any],
        classes: Sequence[str] | None = None,
        slide_ids: Sequence[str] | None = None,
        instance_labels: Sequence[np.ndarray | None] | None = None,
        splits: Sequence[str | None] | None = None,
        patients: Sequence[str | None] | None = None,
        coords: Sequence[np.ndarray | None] | None = None,
    ) -> "BagDataset":
        """In-memory bags. ``labels`` are class names (or values mapped through ``str``) or, with ``classes``
        given, class indices."""
        if len(features) != len(labels):
            raise InputError(f"from_arrays: {len(features)} bags but {len(labels)} labels")
        classes = list(classes) if classes is not None else class_names(labels)
        ids = list(slide_ids) if slide_ids is not None else [f"bag{i:05d}" for i in range(len(features))]
        dims = {np.asarray(f).shape[1] for f in features if np.asarray(f).ndim == 2}
        if len(dims) > 1:
            raise FeatureError(f"from_arrays: bags have different feature dims {sorted(dims)}")
        dim = dims.pop() if dims else 0
        recs = []
        for i, f in enumerate(features):
            f = np.asarray(f, dtype=np.float32)
            recs.append(BagRecord(
                slide_id=ids[i], label=_to_index(labels[i], classes), split=splits[i] if splits else None,
                patient=patients[i] if patients else None, n=len(f), features=f,
                coords=None if coords is None else coords[i],
                instance_labels=None if instance_labels is None or instance_labels[i] is None
                else np.asarray(instance_labels[i], dtype=np.int8),
            ))
        return cls(recs, classes, dim)

    @classmethod
    def from_workspace(
        cls,
        workspace: Workspace | str | os.PathLike[str],
        features: str,
        cohort: Any = None,
        classes: Sequence[str] | None = None,
        require_labels: bool = True,
        preload: bool | str = "auto",
    ) -> "BagDataset":
        """Bags for the cohort's slides from ``RUN/features/<features>/``.

        ``cohort``: a ``Cohort``, a DataFrame, a CSV path, or None for ``RUN/cohort.csv``. With
        ``require_labels=False`` every slide with a feature file is included (label -1 when unknown), as
        ``label`` needs. Skipped (warned, listed in ``skipped``): cohort slides without a feature file,
        feature files of slides the cohort does not know (when labels are required), empty bags, NaN
        features, feature dims that differ from the majority.
        """
        ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        fdir = ws.features_dir(features)
        if not fdir.is_dir():
            raise FeatureError(f"{fdir}: no feature folder; run `histokd embed -w {ws.root} --encoder {features}`")
        df = cohort_frame(ws, cohort)
        present = {p.stem: p for p in sorted(fdir.glob("*.h5")) if not p.name.startswith(".")}
        skipped: dict[str, str] = {}
        rows: dict[str, dict[str, Any]] = {}
        if df is not None:
            for r in df.to_dict("records"):
                rows[str(r["slide_id"])] = r
        for sid in sorted(set(rows) - set(present)):
            skipped[sid] = f"no feature file {fdir / (sid + '.h5')}; run `histokd embed` for it"
        if require_labels:
            for sid in sorted(set(present) - set(rows)):
                skipped[sid] = "has features but is not in the cohort, so its label is unknown; add it to the cohort CSV"
        labels = [rows[s].get("label") for s in rows]
        if require_labels and not any(known_value(v) for v in labels):
            where = ws.cohort_csv if cohort is None else getattr(cohort, "source", None) or "the cohort"
            raise InputError(f"{where}: no slide has a label (no label column, or every label cell empty); training "
                             f"and benchmarks need slide-level labels: give the cohort CSV a label column (predict / "
                             f"label need none)")
        classes = list(classes) if classes is not None else class_names(labels)
        ids = sorted(present) if not require_labels else sorted(set(present) & set(rows))
        recs: list[BagRecord] = []
        shapes: dict[str, tuple[int, int]] = {}
        for sid in ids:
            try:
                check_id(sid)
                shapes[sid] = _h5_shape(present[sid])
            except (FeatureError, InputError) as e:
                skipped[sid] = str(e)
        dim = majority_dim({sid: d for sid, (n, d) in shapes.items() if n > 0}, fdir,
                           {sid: present[sid].name for sid in shapes},
                           "re-embed the odd slides with one encoder, or keep each encoder's features in its own "
                           "feature set") or 0
        for sid, (n, d) in shapes.items():
            rec = _bag_record(ws, features, sid, present[sid], n, d, dim, rows.get(sid, {}), classes, require_labels)
            if isinstance(rec, str):
                skipped[sid] = rec
            else:
                recs.append(rec)
        ds = cls(recs, classes, dim, skipped)
        total = sum(r.n for r in recs) * dim * 4
        if preload is True or (preload == "auto" and total <= PRELOAD_LIMIT_BYTES):
            ds._preload()
        for sid, why in ds.skipped.items():
            log.warning("slide %s left out: %s", sid, why)
        if not ds.records:
            raise FeatureError(f"{fdir}: no usable bags ({len(ds.skipped)} slides left out); see the warnings above")
        return ds

    def _preload(self) -> None:
        keep = []
        for r in self.records:
            try:
                self._load(r)
            except FeatureError as e:
                self.skipped[r.slide_id] = str(e)
                continue
            keep.append(r)
        self.records = keep

    def _load(self, r: BagRecord) -> BagRecord:
        if r.features is None and r.path is not None:
            from histokd.features.store import read_features

            ff = read_features(r.path, expected_dim=self.dim)
            r.features, r.coords = ff.features, ff.coords
            r.meta = ff.attrs
            if r.instance_path is not None:
                r.instance_labels = read_instance_labels(r.instance_path, len(ff.features))
        return r

    # access -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Bag:
        r = self.records[i]
        if r.features is None:  # lazy: read, do not keep (bags may not all fit in memory)
            r = self._load(replace(r))
        return Bag(torch.from_numpy(np.ascontiguousarray(r.features)), r.label, r.slide_id, r.coords,
                   r.instance_labels, r.split)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def positive_index(self) -> int:
        return positive_class(self.classes)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def slide_ids(self) -> list[str]:
        return [r.slide_id for r in self.records]

    @property
    def splits(self) -> list[str | None]:
        return [r.split for r in self.records]

    @property
    def patients(self) -> list[str]:
        return [r.patient or r.slide_id for r in self.records]

    @property
    def sizes(self) -> np.ndarray:
        return np.array([r.n for r in self.records], dtype=np.int64)

    def slide(self, i: int) -> SlideSource:
        """The slide of bag ``i`` (its file, tiling mpp and tumour mask): how methods on pixels read it."""
        r = self.records[i]
        if r.slide is None:
            raise InputError(f"slide {r.slide_id}: its bag has no slide file (in-memory bags, or a cohort row "
                             f"without a path); pixel methods need bags read from a workspace whose cohort "
                             f"gives each slide's path")
        return r.slide

    @property
    def has_instance_labels(self) -> bool:
        return any(r.instance_labels is not None or r.instance_path is not None for r in self.records)

    def subset(self, indices: Sequence[int]) -> "BagDataset":
        return BagDataset([self.records[int(i)] for i in indices], self.classes, self.dim)

    def split(self, name: str) -> "BagDataset":
        """The bags whose ``split`` is ``name`` (``train``/``val``/``test``)."""
        return self.subset([i for i, r in enumerate(self.records) if r.split == name])

    def with_splits(self, splits: Sequence[str]) -> "BagDataset":
        """A copy whose bags carry the given split names (same order)."""
        return BagDataset([replace(r, split=s) for r, s in zip(self.records, splits)], self.classes, self.dim,
                          self.skipped)

    def feature_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and std [D] over every instance of every bag (streaming, float64)."""
        s = np.zeros(self.dim)
        ss = np.zeros(self.dim)
        n = 0
        for i in range(len(self)):
            f = self[i].features.numpy().astype(np.float64)
            s += f.sum(0)
            ss += (f * f).sum(0)
            n += len(f)
        mean = s / max(n, 1)
        std = np.sqrt(np.maximum(ss / max(n, 1) - mean**2, 0.0))
        return mean.astype(np.float32), std.astype(np.float32)

    def map_features(self, fn: Callable[[np.ndarray], np.ndarray]) -> "BagDataset":
        """An in-memory copy with ``fn`` applied to each bag's features [N, D]."""
        recs = []
        for i, r in enumerate(self.records):
            b = self[i]
            f = np.asarray(fn(b.features.numpy()), dtype=np.float32)
            recs.append(replace(r, features=f, coords=b.coords, instance_labels=b.instance_labels, n=len(f)))
        return BagDataset(recs, self.classes, recs[0].features.shape[1] if recs else self.dim, self.skipped)


def _to_index(label: Any, classes: Sequence[str]) -> int:
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and str(label) not in classes:
        if 0 <= int(label) < len(classes):
            return int(label)
    name = str(label).strip()
    if name not in classes:
        raise InputError(f"label {label!r} is not one of the classes {list(classes)}")
    return list(classes).index(name)


def _opt_str(v: Any) -> str | None:
    return str(v).strip() if known_value(v) else None


def _h5_shape(path: Path) -> tuple[int, int]:
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise FeatureError(f"{path}: no 'features' dataset; re-run `histokd embed` for this slide")
            shape = f["features"].shape
    except FeatureError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated / not HDF5
        raise FeatureError(f"{path}: cannot read ({e}); delete it and re-run `histokd embed`") from None
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise FeatureError(f"{path}: features have shape {shape}, want [N, D]; re-extract")
    return int(shape[0]), int(shape[1])
