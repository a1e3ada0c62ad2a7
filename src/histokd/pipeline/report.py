"""``histokd report`` / ``histokd.report(...)``: heatmaps, QuPath GeoJSON, tiles.csv, plots and one
self-contained ``index.html`` -> ``RUN/reports/<id>/``.

Reads ``RUN/predictions/<id>/`` (contract 7), the workspace cohort (``RUN/cohort.csv``) and the slides;
the pieces (prediction files, tile images, metric tables, plots, the HTML template) are
:mod:`histokd.outputs.report`'s, the files it writes are listed there. A slide whose file or prediction is
cannot be reported (prediction or slide file missing or unreadable, bad mask file, ...) is skipped with a
warning and listed in the report, which is still written; it is a failure of the run: :func:`run_report`
returns it in ``ReportResult.failures`` and ``histokd report`` ends with ``N of M slides failed:``, one line
per slide and exit code 1, as ``histokd label`` does. Slides left out by request (``slides=``, ``--slides``)
are not attempted, so they are neither reported nor failures.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from histokd import __version__
from histokd.classes import stored_positive_class
from histokd.errors import HistokdError, InputError
from histokd.outputs.geojson import prediction_geojson, write_geojson
from histokd.outputs.heatmaps import Overlay, render_heatmap, write_bytes
from histokd.outputs.report import data_uri, pixel_tables, render_report_html, report_evaluation, tile_card
from histokd.outputs.tables import flatten_metrics, tiles_frame, write_csv
from histokd.pipeline.predict import slide_table_ood
from histokd.runner import run_slides
from histokd.predictions import attr_value, read_prediction
from histokd.workspace import Workspace, read_csv, write_text

log = logging.getLogger("histokd")


@dataclass
class ReportResult:
    """What ``report`` did: the ``index.html`` written, the slides that could not be reported (id -> one
    line; each is also in the report's "Skipped slides") and how many slides were attempted."""

    index: Path
    failures: dict[str, str] = field(default_factory=dict)
    n_total: int = 0


def report(
    workspace: str | os.PathLike[str] | Workspace,
    model_id: str,
    slides: list[str] | None = None,
    top_k: int = 8,
    threshold: float | None = None,
    thumbnail_size: int = 1024,
    n_boot: int = 1000,
    seed: int = 0,
    wait: bool = False,
    view: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``RUN/reports/<model_id>/`` and return the path of its ``index.html`` (see :func:`run_report`,
    which also returns the slides that could not be reported)."""
    return run_report(workspace, model_id, slides=slides, top_k=top_k, threshold=threshold,
                      thumbnail_size=thumbnail_size, n_boot=n_boot, seed=seed, wait=wait,
                      view=view).index


def run_report(
    workspace: str | os.PathLike[str] | Workspace,
    model_id: str,
    slides: list[str] | None = None,
    top_k: int = 8,
    threshold: float | None = None,
    thumbnail_size: int = 1024,
    n_boot: int = 1000,
    seed: int = 0,
    wait: bool = False,
    view: str | os.PathLike[str] | None = None,
) -> ReportResult:
    """Write ``RUN/reports/<model_id>/``; returns its ``index.html`` and the slides that could not be reported.

    Args:
        workspace: the run folder (``-w RUN``).
        model_id: the model whose predictions (``RUN/predictions/<model_id>/``) are reported.
        slides: slide ids to draw (default: every slide with a prediction file). Bag-level metrics
            always use every slide of ``bags.csv``.
        top_k: how many highest- and lowest-probability tiles per slide to show.
        threshold: positive-class probability for tumour regions and thresholded metrics (default:
            ``threshold`` from the predictions' or model's ``metrics.json``, else 0.5).
        thumbnail_size: longer side (px) of the slide thumbnails under the heatmaps.
        n_boot: bootstrap resamples for the 95% CIs.
        seed: seed of the bootstrap.
        wait: wait for another run writing the same report folder instead of stopping.
        view: where each slide's "view" link points: a static export folder of ``histokd view --export`` or the
            base address of a viewer (``http(s)://...``). Default: ``RUN/view/`` where it holds an export, else
            no links (the report then says how to open the viewer).
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    view_base = view_link_base(ws, model_id, view)
    pred_dir = ws.predictions_dir(model_id)
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: no predictions for model {model_id!r}; run `histokd label -w {ws.root} --model {model_id}` first")
    out = ws.reports_dir(model_id)
    with ws.writer(out, wait=wait):
        cohort = _cohort_frame(ws)
        pred_metrics = _read_json(ws.predictions_metrics(model_id))
        model_metrics = _read_json(ws.model_files(model_id).metrics)
        if threshold is None:
            threshold = _find_threshold(pred_metrics, model_metrics)
        features = _label_features(ws, model_id, pred_metrics)

        slide_ids = list(slides) if slides else sorted(p.stem for p in pred_dir.glob("*.h5"))
        ood = slide_table_ood(ws, model_id)  # histokd predict's out-of-distribution flags, where it ran
        run = run_slides(slide_ids, key=str, description="report", catch=(HistokdError,),
                         failure_log="report: skipping slide %s: %s",
                         work=lambda sid: _slide(ws, model_id, sid, cohort, top_k, threshold, thumbnail_size,
                                                 features))
        skipped = [{"slide_id": sid, "reason": why} for sid, why in run.failures.items()]
        sections, tile_frames, inst, classes = _collect_slides(run.results, ood, view_base)

        if tile_frames:
            write_csv(ws.report_tiles_csv(model_id), pd.concat(tile_frames, ignore_index=True))
        bags = _bags_frame(ws.predictions_bags_csv(model_id), sections, cohort)
        classes = classes or _classes_from(pred_dir, bags)
        stored = _first(sections, "positive_class") or pred_metrics.get("positive_class")
        pos = stored_positive_class(classes, stored) if classes else None
        ctx = report_evaluation(bags, inst, classes, threshold, n_boot, seed,
                                lambda name: ws.report_plot(model_id, name), positive=pos,
                                patients=_patients(cohort))
        ctx.update(
            model_id=model_id,
            method=_first(sections, "method") or str(pred_metrics.get("method", "")),
            classes=classes,
            positive=classes[pos] if classes else "",
            threshold=threshold,
            slides=sections,
            skipped=skipped,
            metrics_json=[("predictions/metrics.json", flatten_metrics(pred_metrics)),
                          ("models/metrics.json", flatten_metrics(model_metrics))],
            pixel_tables=pixel_tables(pred_metrics, _read_json(ws.model_files(model_id).pixel_metrics)),
            n_slides=len(sections),
            view_base=view_base,
            view_hint=f"histokd view -w {ws.root}",
            view_export_hint=f"histokd view -w {ws.root} --export {ws.view_export_dir()}",
            any_ood=any("ood" in s for s in sections),
            n_tiles=int(sum(len(df) for df in tile_frames)),
            version=__version__,
        )
        index = ws.report_index(model_id)
        write_text(index, render_report_html(ctx))
        log.info("report: %d slides (%d skipped) -> %s", len(sections), len(skipped), index)
        return ReportResult(index, {s["slide_id"]: s["reason"] for s in skipped}, len(slide_ids))


def _patients(cohort: pd.DataFrame) -> dict[str, str | None] | None:
    """Slide id -> patient id, where the cohort has the column."""
    if "patient_id" not in cohort:
        return None
    return {str(k): (None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
            for k, v in cohort["patient_id"].items()}


def _collect_slides(results: list[tuple[str, tuple[dict, pd.DataFrame, dict | None]]], ood: dict,
                    view_base: str | None) -> tuple[list[dict], list[pd.DataFrame], dict, list[str] | None]:
    """The reported slides' sections (with their out-of-distribution flag and view link), tile tables,
    pooled tile truth and the classes of the first."""
    sections: list[dict] = []
    tile_frames: list[pd.DataFrame] = []
    inst: dict[str, list[np.ndarray]] = {"y": [], "p": [], "g": [], "split": []}
    classes: list[str] | None = None
    for sid, (sec, df, gt) in results:
        if sid in ood:
            sec["ood"] = ood[sid]
        if view_base is not None:
            sec["view"] = f"{view_base}#{quote(sid, safe='')}"
        sections.append(sec)
        tile_frames.append(df)
        classes = classes or sec["classes"]
        if gt is not None:
            inst["y"].append(gt["y"])
            inst["p"].append(gt["p"])
            inst["g"].append(np.full(len(gt["y"]), len(inst["g"])))
            inst["split"].append(np.full(len(gt["y"]), sec["split"] or "all", dtype=object))
    return sections, tile_frames, inst, classes


def view_link_base(ws: Workspace, model_id: str, view: str | os.PathLike[str] | None) -> str | None:
    """The address each slide's view link starts with (the slide id goes after ``#``, which the viewer page
    opens): a viewer URL as given, or a static export's ``index.html`` relative to the report folder."""
    if view is None:
        if not (ws.view_export_dir() / "index.html").is_file():
            return None
        view = ws.view_export_dir()
    text = str(view)
    if re.match(r"^https?://", text):
        return text.split("#", 1)[0]
    folder = Path(view)
    index = folder if folder.name == "index.html" else folder / "index.html"
    if not index.is_file():
        raise InputError(f"{index}: no viewer export there; write one with `histokd view -w {ws.root} --export "
                         f"{folder}` or give --view an http(s) address")
    try:
        rel = os.path.relpath(index.resolve(), ws.reports_dir(model_id).resolve())
    except ValueError:  # another drive (Windows)
        return index.resolve().as_uri()
    return quote(Path(rel).as_posix(), safe="/.-_~")


def _slide(
    ws: Workspace, model_id: str, sid: str, cohort: pd.DataFrame, top_k: int, threshold: float,
    thumbnail_size: int, features: str | None,
) -> tuple[dict, pd.DataFrame, dict | None]:
    """Everything of one slide: heatmap, GeoJSON, tile rows, top / bottom tiles, and the tile ground truth
    that ``histokd label`` wrote beside the features (contract 6, its ``--tumour-threshold``)."""
    from histokd.slides.reader import open_slide

    pred_path = ws.predictions_h5(model_id, sid)
    if not pred_path.is_file():
        raise InputError(f"{pred_path}: prediction missing; run `histokd label` for this slide")
    if sid not in cohort.index:
        raise InputError(f"{ws.cohort_csv}: slide {sid!r} is not in the workspace cohort; re-run `histokd tile`")
    row = cohort.loc[sid]
    pred = read_prediction(pred_path)
    pos = pred.positive
    tiles_attrs = _tiles_attrs(ws, sid)
    psl0 = pred.patch_size_level0 or float(tiles_attrs.get("patch_size_level0", 0) or 0)
    if psl0 <= 0:
        raise InputError(f"{pred_path}: attr patch_size_level0 missing; run `histokd label` again")
    p_pos = pred.probs[:, pos]

    with open_slide(row["path"], mpp=row.get("level0_mpp")) as slide:  # the mpp it was tiled with (--slide-mpp)
        thumb = slide.get_thumbnail(thumbnail_size)
        dims = slide.dimensions
        gt_overlay = None
        mask_path = row.get("mask_path")
        if isinstance(mask_path, str) and mask_path:  # drawn as a contour; the tile truth is label's
            from histokd.slides.masks import load_mask

            gt_overlay = Overlay(*load_mask(mask_path, dims))
        truth = _tile_truth(ws, features, sid, len(pred.coords))
        gt_fraction = truth[0] if truth is not None else None
        pixel = Overlay(pred.mask > 0, pred.mask_downsample) if pred.mask is not None else None
        png = render_heatmap(
            thumb, dims, pred.coords, psl0, p_pos, ground_truth=gt_overlay, pixel_mask=pixel,
            title=f"{sid}  (label: {row.get('label') or 'none'}, bag P({pred.classes[pos]}) = {pred.bag_probs[pos]:.3f})",
            label=f"P({pred.classes[pos]})",
        )
        order = np.argsort(-p_pos, kind="stable")
        k = min(top_k, len(order))
        top = [tile_card(slide, pred, i, pos, psl0, tiles_attrs) for i in order[:k]]
        bottom = [tile_card(slide, pred, i, pos, psl0, tiles_attrs) for i in order[::-1][:k]]

    write_bytes(ws.report_heatmap(model_id, sid), png)
    write_geojson(ws.report_geojson(model_id, sid),
                  prediction_geojson(pred.coords, psl0, pred.probs, pred.classes, threshold, slide_id=sid, positive=pos))
    df = tiles_frame(sid, pred.coords, pred.probs, pred.classes, pred.scores, gt_fraction)
    split = str(row.get("split")) if isinstance(row.get("split"), str) else ""
    sec = {
        "slide_id": sid,
        "label": str(row.get("label") or "unlabelled"),
        "split": split,
        "classes": pred.classes,
        "positive_class": pred.classes[pos],
        "method": str(pred.attrs.get("method", "")),
        "bag_prob": float(pred.bag_probs[pos]),
        "pred": pred.classes[int(np.argmax(pred.bag_probs))],
        "n_tiles": int(len(pred.coords)),
        "n_regions_tiles": int((p_pos >= threshold).sum()),
        "has_gt": gt_overlay is not None,
        "has_mask": pixel is not None,
        "heatmap": data_uri(png, "image/png"),
        "top": top,
        "bottom": bottom,
    }
    gt = None
    if truth is not None and (truth[1] >= 0).any():
        known = truth[1] >= 0
        gt = {"y": truth[1][known].astype(int), "p": p_pos[known].astype(np.float64)}
    return sec, df, gt


def _label_features(ws: Workspace, model_id: str, pred_metrics: dict) -> str | None:
    """The feature set ``histokd label`` predicted from (its ``metrics.json``, else the model's)."""
    if isinstance(pred_metrics.get("features"), str):
        return pred_metrics["features"]
    try:
        from histokd.methods.base import read_model_meta

        return read_model_meta(ws.model_dir(model_id)).get("features")
    except HistokdError:
        return None


def _tile_truth(ws: Workspace, features: str | None, sid: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(tumour fraction [N], label [N] int8, -1 unknown) of one slide's tiles, as ``histokd label`` wrote
    them (contract 6); None where it wrote none (no mask) or the file does not fit the prediction."""
    import h5py

    if not features:
        return None
    path = ws.instance_labels_h5(features, sid)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            frac = np.asarray(f["tumour_fraction"][()], np.float32)
            lab = np.asarray(f["label"][()], np.int8)
    except (OSError, KeyError) as e:
        log.warning("report: %s unreadable (%s); slide %s has no tile ground truth", path, e, sid)
        return None
    if len(lab) != n or len(frac) != n:
        log.warning("report: %s has %d tiles, the prediction %d; slide %s has no tile ground truth "
                    "(run `histokd label --overwrite`)", path, len(lab), n, sid)
        return None
    return frac, lab


def _bags_frame(path: Path, sections: list[dict], cohort: pd.DataFrame) -> pd.DataFrame:
    """``bags.csv`` with labels as class names and a ``split`` column ('all' where unknown); built from
    the reported slides when the file is missing."""
    if path.is_file():
        try:
            df = read_csv(path, dtype={"slide_id": str, "label": str, "pred": str, "split": str})
        except (OSError, ValueError, pd.errors.ParserError) as e:
            raise InputError(f"{path}: unreadable ({e}); run `histokd label` again") from None
    else:
        log.warning("report: %s missing; bag metrics use the reported slides only", path)
        rows = []
        for s in sections:
            r = {"slide_id": s["slide_id"], "split": s["split"], "label": s["label"], "pred": s["pred"]}
            r[f"prob_{s['positive_class']}"] = s["bag_prob"]
            rows.append(r)
        df = pd.DataFrame(rows, columns=["slide_id", "split", "label", "pred"] if not rows else None)
    if "split" not in df:
        df["split"] = df["slide_id"].map(cohort["split"]) if "split" in cohort else "all"
    df["split"] = df["split"].fillna("all").astype(str).replace({"": "all", "nan": "all"})
    return df


def _classes_from(pred_dir: Path, bags: pd.DataFrame) -> list[str]:
    for p in sorted(pred_dir.glob("*.h5")):
        try:
            return read_prediction(p).classes
        except HistokdError:
            continue
    return [c[len("prob_"):] for c in bags.columns if c.startswith("prob_")]


def _find_threshold(*metrics: dict) -> float:
    for m in metrics:
        t = m.get("threshold") if isinstance(m, dict) else None
        if isinstance(t, (int, float)) and 0 <= t <= 1:
            return float(t)
    return 0.5


def _cohort_frame(ws: Workspace) -> pd.DataFrame:
    """The workspace cohort indexed by slide_id (contract 1)."""
    from histokd.data.cohort import load_workspace_cohort

    df = load_workspace_cohort(ws).df.copy()
    df.index = pd.Index(df["slide_id"].astype(str).tolist())
    return df


def _tiles_attrs(ws: Workspace, sid: str) -> dict:
    """Attributes of ``RUN/tiles/<slide>.h5`` (patch size, mpp), or {} when the file is absent."""
    import h5py

    path = ws.tiles_h5(sid)
    if not path.is_file():
        return {}
    try:
        with h5py.File(path, "r") as f:
            return {k: attr_value(v) for k, v in f.attrs.items()}
    except OSError:
        log.warning("report: %s unreadable; tile images use the prediction geometry", path)
        return {}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        log.warning("report: %s unreadable (%s); its metrics are left out", path, e)
        return {}
    return obj if isinstance(obj, dict) else {"value": obj}


def _first(sections: list[dict], key: str) -> str:
    return next((s[key] for s in sections if s.get(key)), "")
