"""What a model bundle records of its inputs, read from the training run (``tiling``, ``features``), and
the out-of-distribution scores of a new slide against the bundle's summaries. :mod:`histokd.pipeline.bundle`
writes and checks the bundle with them (and re-exports :func:`ood_of_slide`, :func:`colour_descriptor`)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from histokd.errors import FeatureError, HistokdError, InputError
from histokd.workspace import ModelFiles, Workspace

log = logging.getLogger("histokd")

_FEATURE_KEYS = ("encoder", "weights_hash", "precision", "runtime", "stain_norm", "target_mpp", "patch_size")


def _majority(values: list[Any], key: str, where: Path) -> Any:
    counts = Counter(json.dumps(v, sort_keys=True, default=str) for v in values)
    if len(counts) > 1:
        log.warning("%s: training slides differ in %s (%s); the bundle records the most frequent", where, key,
                    ", ".join(sorted(counts)))
    return json.loads(counts.most_common(1)[0][0])


def _tiling_of(ws: Workspace, slide_ids: list[str]) -> dict[str, Any] | None:
    """The tiling settings of the training slides' grids (None when none has a grid, e.g. imported features)."""
    import h5py

    recs = []
    for sid in slide_ids:
        path = ws.tiles_h5(sid)
        if not path.is_file():
            continue
        with contextlib.suppress(OSError), h5py.File(path, "r") as f:
            a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            recs.append(a)
    if not recs:
        return None
    out: dict[str, Any] = {}
    for key, cast in (("target_mpp", float), ("patch_size", int), ("overlap", int), ("min_tissue", float)):
        vals = [cast(r[key]) for r in recs if key in r]
        out[key] = _majority(vals, key, ws.tiles_dir) if vals else None
    params = [json.loads(r["tissue_params"]) for r in recs if isinstance(r.get("tissue_params"), str)]
    out["tissue_params"] = _majority(params, "tissue_params", ws.tiles_dir) if params else None
    # a user's tissue mask is cohort-specific: only whether one was used is recorded, never its path
    out["tissue_source"] = _majority(["auto" if r.get("tissue_source", "auto") == "auto" else "user mask"
                                      for r in recs], "tissue_source", ws.tiles_dir)
    return out


def _features_of(paths: list[Path], fdir: Path) -> dict[str, Any]:
    from histokd.features.store import feature_file_info

    infos = [i for i in (feature_file_info(p) for p in paths) if i is not None]
    if not infos:
        raise FeatureError(f"{fdir}: no readable feature file of the training slides; re-run `histokd embed`")
    out: dict[str, Any] = {}
    for key in _FEATURE_KEYS:
        vals = [i[2].get(key) for i in infos]
        v = _majority([None if x is None else str(x) for x in vals], key, fdir)
        out[key] = v
    out["target_mpp"] = float(out["target_mpp"]) if out["target_mpp"] is not None else None
    out["patch_size"] = int(out["patch_size"]) if out["patch_size"] is not None else None
    out["precision"] = out["precision"] or "fp32"  # files from before the attribute are fp32
    out["stain_norm"] = out["stain_norm"] or "none"
    out["dim"] = int(_majority([i[0][1] for i in infos], "dim", fdir))
    out["dtype"] = _majority([i[1] for i in infos], "dtype", fdir)
    return out


def _cohort_rows(ws: Workspace) -> dict[str, dict]:
    """The workspace cohort's rows by slide id ({} without a cohort)."""
    from histokd.data.cohort import load_workspace_cohort

    try:
        return {str(r["slide_id"]): r for r in load_workspace_cohort(ws).rows()}
    except HistokdError:
        return {}


def colour_descriptor(ws: Workspace, slide_id: str, rows: dict[str, dict]) -> np.ndarray:
    """The tissue colour descriptor of a tiled slide of the workspace (:mod:`histokd.slides.stain_stats`)."""
    from histokd.slides.stain_stats import tissue_colour_descriptor

    row = rows.get(slide_id)
    if row is None:
        raise InputError(f"slide {slide_id!r} is not in {ws.cohort_csv}; re-run `histokd tile`")
    return tissue_colour_descriptor(row["path"], ws.tiles_h5(slide_id), row.get("level0_mpp"))


def ood_of_slide(bundle: dict[str, Any], ws: Workspace, features: str, slide_id: str,
                 rows: dict[str, dict]) -> dict[str, Any]:
    """The out-of-distribution scores of one slide against the bundle's summaries (:mod:`histokd.features.ood`):
    ``feature_score`` / ``colour_score`` (None where the bundle or the slide has no such summary / descriptor),
    ``flag`` (True when a score is above its threshold; None when neither could be scored)."""
    from histokd.features.ood import ood_score, slide_descriptor
    from histokd.features.store import read_features

    summaries = bundle.get("ood") or {}
    where = ModelFiles(ws.model_dir(str(bundle["model_id"]))).bundle
    out: dict[str, Any] = {"feature_score": None, "colour_score": None, "flag": None}
    flags = []
    if summaries.get("features"):
        try:
            ff = read_features(ws.features_h5(features, slide_id), expected_dim=int(bundle["features"]["dim"]))
            out["feature_score"], f = ood_score(summaries["features"], slide_descriptor(ff.features), where)
            flags.append(f)
        except (HistokdError, OSError) as e:
            log.warning("%s: no feature out-of-distribution score (%s)", slide_id, e)
    if summaries.get("colour"):
        try:
            out["colour_score"], f = ood_score(summaries["colour"], colour_descriptor(ws, slide_id, rows), where)
            flags.append(f)
        except (HistokdError, OSError) as e:
            log.warning("%s: no colour out-of-distribution score (%s)", slide_id, e)
    out["flag"] = any(flags) if flags else None
    return out
