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
from histokd.workspace import Workspace, atomic_path, check_id, writer_lock

log = logging.getLogger("histokd")

#: Instance labels are positive when the tumour fraction of the tile is above this (contract 6).
DEFAULT_TUMOUR_THRESHOLD = 0.5
PRELOAD_LIMIT_BYTES = 2 * 2**30


def _known(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and np.isnan(v):
        return False
    return str(v).strip() != ""


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


def _bag_record(ws: Workspace, features: str, sid: str, path: Path, n: int, d: int, dim: int, row: dict[str, Any],
                classes: list[str], require_labels: bool) -> BagRecord | str:
    """The bag of one slide's feature file, or why it is left out (one line)."""
    if n == 0:
        return f"{path}: empty bag (0 tiles); check its tissue mask / tiling"
    if d != dim:
        return f"{path}: features are {d}-d but the feature set is {dim}-d; re-embed this slide"
    raw = row.get("label")
    if require_labels and not _known(raw):
        return "no label in the cohort; fill its label column"
    if _known(raw) and str(raw).strip() not in classes:
        if require_labels:
            return f"label {raw!r} is not one of the model's classes {classes}"
        # labelling needs no label: the slide is predicted, and left out of the metrics (label -1)
        log.warning("slide %s: label %r is not one of the model's classes %s; predicted, not evaluated",
                    sid, raw, classes)
        raw = None
    ipath = ws.instance_labels_h5(features, sid)
    return BagRecord(
        slide_id=sid, label=_to_index(raw, classes) if _known(raw) else -1,
        split=_opt_str(row.get("split")), patient=_opt_str(row.get("patient_id", row.get("patch_id"))),
        path=path, n=n, instance_path=ipath if ipath.exists() else None,
    )


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
        df = _cohort_frame(ws, cohort)
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
        if require_labels and not any(_known(v) for v in labels):
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
    return str(v).strip() if _known(v) else None


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


def _cohort_frame(ws: Workspace, cohort: Any):  # noqa: ANN202 - pandas is imported lazily
    import pandas as pd

    if cohort is None:
        if not ws.cohort_csv.exists():
            return None
        cohort = ws.cohort_csv
    if isinstance(cohort, pd.DataFrame):
        return cohort
    if hasattr(cohort, "df"):
        return cohort.df
    try:
        from histokd.data.cohort import read_cohort

        return read_cohort(cohort, require_label=False).df  # labels are checked per slide (require_labels)
    except ModuleNotFoundError:  # cohort module absent: a plain CSV read
        return pd.read_csv(cohort, dtype={"slide_id": str, "label": str})


# instance labels (contract 6) ------------------------------------------------------------------------

def instance_labels_path(ws: Workspace, features: str, slide_id: str) -> Path:
    return ws.instance_labels_h5(features, slide_id)


def read_instance_labels(path: str | os.PathLike[str], n: int | None = None) -> np.ndarray:
    """``label`` [N] int8 (1 tumour, 0 not, -1 unknown) from an instance-labels file."""
    with h5py.File(path, "r") as f:
        lab = np.asarray(f["label"][()], dtype=np.int8)
    if n is not None and len(lab) != n:
        raise FeatureError(f"{path}: {len(lab)} instance labels for {n} tiles; delete it and re-run `histokd label`")
    return lab


def write_instance_labels(path: str | os.PathLike[str], fraction: np.ndarray, threshold: float,
                          known: bool = True) -> Path:
    fraction = np.asarray(fraction, dtype=np.float32)
    label = (fraction > threshold).astype(np.int8) if known else np.full(len(fraction), -1, np.int8)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("tumour_fraction", data=fraction)
        f.create_dataset("label", data=label)
        f.attrs["threshold"] = float(threshold)
    return Path(path)


def ensure_instance_labels(
    workspace: Workspace | str | os.PathLike[str],
    features: str,
    cohort: Any = None,
    threshold: float = DEFAULT_TUMOUR_THRESHOLD,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write instance labels beside the features for every slide with a tumour mask (contract 6).

    A tile is tumour when its mask fraction is above ``threshold``. Slides of the negative class get all-0
    labels when the cohort has masks for the other slides (a normal slide has no tumour). Returns
    ``{slide_id: error}`` for slides whose mask could not be used (the rest are still written).
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    df = _cohort_frame(ws, cohort)
    if df is None or "mask_path" not in df.columns:
        return {}
    classes = class_names(df["label"].tolist())
    pos = positive_class(classes) if len(classes) == 2 else None
    failures: dict[str, str] = {}
    records = df.to_dict("records")
    if not records or not ws.features_dir(features).is_dir():
        return failures
    todo = [r for r in records if _gets_labels(r, classes, pos) and _needs_labels(ws, features, r, threshold, overwrite)]
    if not todo:  # all made already: only read (a read-only or shared feature set stays untouched)
        return failures
    # label, bench, probe and report may all make them: one writer of the folder at a time (a second waits,
    # then finds them made)
    with writer_lock(instance_labels_path(ws, features, str(todo[0]["slide_id"])).parent, wait=True):
        _write_instance_labels(ws, features, todo, classes, pos, threshold, overwrite, failures)
    return failures


def _gets_labels(r: dict, classes: list[str], pos: int | None) -> bool:
    """Whether a slide gets instance labels at all: it has a tumour mask, or it is of the negative class."""
    if _known(r.get("mask_path")):
        return True
    lab = str(r.get("label") or "").strip()
    return pos is not None and _known(r.get("label")) and lab in classes and classes.index(lab) != pos


def _needs_labels(ws: Workspace, features: str, r: dict, threshold: float, overwrite: bool) -> bool:
    """Whether slide ``r`` has features but no instance labels at ``threshold`` yet."""
    sid = str(r["slide_id"])
    if not ws.features_h5(features, sid).exists():
        return False
    out = instance_labels_path(ws, features, sid)
    if overwrite or not out.exists():
        return True
    try:
        with h5py.File(out, "r") as f:
            return abs(float(f.attrs.get("threshold", -1)) - threshold) >= 1e-9
    except OSError:  # damaged: make it again
        return True


def _write_instance_labels(ws: Workspace, features: str, records: list[dict], classes: list[str], pos: int | None,
                           threshold: float, overwrite: bool, failures: dict[str, str]) -> None:
    from histokd.features.store import read_features

    for r in records:
        sid = str(r["slide_id"])
        fpath = ws.features_h5(features, sid)
        out = instance_labels_path(ws, features, sid)
        if not fpath.exists():
            continue
        if out.exists() and not overwrite:
            with h5py.File(out, "r") as f:
                if abs(float(f.attrs.get("threshold", -1)) - threshold) < 1e-9:
                    continue
        try:
            ff = read_features(fpath)
            if _known(r.get("mask_path")):
                frac = _mask_fractions(ws, r, ff)
                write_instance_labels(out, frac, threshold)
            elif pos is not None and _known(r.get("label")) and classes.index(str(r["label"]).strip()) != pos:
                write_instance_labels(out, np.zeros(len(ff), np.float32), threshold)
        except Exception as e:  # noqa: BLE001 - one bad mask must not stop the others
            failures[sid] = str(e)
            log.warning("instance labels for %s not written: %s", sid, e)


def _mask_fractions(ws: Workspace, row: dict[str, Any], ff: Any) -> np.ndarray:
    from histokd.slides.masks import load_mask, tile_fractions

    sid = str(row["slide_id"])
    ps0 = ff.attrs.get("patch_size_level0")
    tiles_h5 = ws.tiles_h5(sid)
    dims = None
    if tiles_h5.exists():
        with h5py.File(tiles_h5, "r") as f:
            ps0 = ps0 if ps0 is not None else f.attrs.get("patch_size_level0")
    try:
        from histokd.slides.reader import open_slide
        from histokd.slides.tiling import tiled_level0_mpp

        with open_slide(row["path"], mpp=tiled_level0_mpp(tiles_h5)) as s:  # the mpp it was tiled with
            dims = tuple(s.dimensions)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{row['path']}: cannot read slide dimensions for its mask ({e})") from None
    if ps0 is None:
        raise FeatureError(f"{sid}: no patch_size_level0 attribute in features or tiles; re-run `histokd tile`")
    mask, ds = load_mask(row["mask_path"], dims)
    return tile_fractions(mask, ds, ff.coords, float(ps0))
