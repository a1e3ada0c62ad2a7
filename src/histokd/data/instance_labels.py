"""Instance labels (contract 6): per-tile tumour truth from the cohort's masks, written once beside the features
(``RUN/features/<enc>/instance_labels/<slide>.h5``: ``tumour_fraction`` (N,) float32 and ``label`` (N,) int8, -1
where unknown) by whatever stage first needs them (``label``, ``bench``, ``probe``), under that folder's lock."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from histokd.classes import class_names, positive_class
from histokd.errors import FeatureError, InputError
from histokd.workspace import Workspace, atomic_path, writer_lock

log = logging.getLogger("histokd")

#: Instance labels are positive when the tumour fraction of the tile is above this (contract 6).
DEFAULT_TUMOUR_THRESHOLD = 0.5


def known_value(v: Any) -> bool:
    """A cohort cell that holds a value (not None, NaN or blank)."""
    if v is None:
        return False
    if isinstance(v, float) and np.isnan(v):
        return False
    return str(v).strip() != ""


def cohort_frame(ws: Workspace, cohort: Any):  # noqa: ANN202 - pandas is imported lazily
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
    df = cohort_frame(ws, cohort)
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
        _write_instance_labels(ws, features, todo, threshold, overwrite, failures)
    return failures


def _gets_labels(r: dict, classes: list[str], pos: int | None) -> bool:
    """Whether a slide gets instance labels at all: it has a tumour mask, or it is of the negative class."""
    if known_value(r.get("mask_path")):
        return True
    lab = str(r.get("label") or "").strip()
    return pos is not None and known_value(r.get("label")) and lab in classes and classes.index(lab) != pos


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


def _write_instance_labels(ws: Workspace, features: str, records: list[dict], threshold: float, overwrite: bool,
                           failures: dict[str, str]) -> None:
    """Write the labels of ``records`` (slides that get labels, :func:`_gets_labels`): tile fractions of the
    tumour mask, or all 0 for a negative slide without one. Checked again under the lock: another run may have
    made them while this one waited."""
    from histokd.features.store import read_features

    for r in records:
        sid = str(r["slide_id"])
        if not _needs_labels(ws, features, r, threshold, overwrite):
            continue
        out = instance_labels_path(ws, features, sid)
        try:
            ff = read_features(ws.features_h5(features, sid))
            frac = _mask_fractions(ws, r, ff) if known_value(r.get("mask_path")) else np.zeros(len(ff), np.float32)
            write_instance_labels(out, frac, threshold)
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
