"""``histokd report``: heatmaps, QuPath GeoJSON, tiles.csv, plots and one self-contained ``index.html``.

Reads ``RUN/predictions/<id>/`` (contract 7), the workspace cohort (``RUN/cohort.csv``) and the slides,
and writes ``RUN/reports/<id>/``::

    index.html               self-contained: every image is a base64 data URI, no external JS/CSS
    heatmaps/<slide>.png     tile probabilities over the thumbnail (+ ground-truth contour, pixel mask)
    geojson/<slide>.geojson  QuPath objects: tiles with probabilities, merged tumour regions
    tiles.csv                one row per tile of every reported slide
    plots/{roc,pr,calibration,confusion}.png

A slide whose file or prediction is missing is skipped with a warning (listed in the report); the
report itself is still written. Every file is written atomically.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histokd.errors import HistokdError, InputError
from histokd.outputs.geojson import positive_index, prediction_geojson, write_geojson
from histokd.outputs.heatmaps import Overlay, render_heatmap, write_bytes
from histokd.outputs.plots import plot_calibration, plot_confusion, plot_pr, plot_roc
from histokd.outputs.tables import MetricRow, binary_metrics, confusion_matrix, flatten_metrics, tiles_frame, write_csv
from histokd.progress import progress
from histokd.workspace import Workspace, read_csv, write_text

log = logging.getLogger("histokd")

#: Tile side (px) of the top / bottom tile images in the HTML.
TILE_DISPLAY_PX = 128
#: A tile counts as tumour in the ground truth when this fraction of it is inside the mask (contract 6).
GT_TILE_FRACTION = 0.5


@dataclass
class SlidePrediction:
    """One ``RUN/predictions/<id>/<slide>.h5`` (contract 7)."""

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


def read_prediction(path: str | os.PathLike[str]) -> SlidePrediction:
    """Read one prediction file; a damaged or incomplete file raises a one-line :class:`InputError`."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
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


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray):
        return v.tolist() if v.dtype.kind != "S" else [x.decode() for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v


# ---------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------


def report(
    workspace: str | os.PathLike[str] | Workspace,
    model_id: str,
    slides: list[str] | None = None,
    top_k: int = 8,
    threshold: float | None = None,
    thumbnail_size: int = 1024,
    n_boot: int = 1000,
    seed: int = 0,
) -> Path:
    """Write ``RUN/reports/<model_id>/`` and return the path of its ``index.html``.

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
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    pred_dir = ws.predictions_dir(model_id)
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: no predictions for model {model_id!r}; run `histokd label -w {ws.root} --model {model_id}` first")
    out = ws.reports_dir(model_id)
    cohort = _cohort_frame(ws)
    pred_metrics = _read_json(pred_dir / "metrics.json")
    model_metrics = _read_json(ws.model_dir(model_id) / "metrics.json")
    if threshold is None:
        threshold = _find_threshold(pred_metrics, model_metrics)

    slide_ids = list(slides) if slides else sorted(p.stem for p in pred_dir.glob("*.h5"))
    sections: list[dict] = []
    skipped: list[dict] = []
    tile_frames: list[pd.DataFrame] = []
    inst: dict[str, list[np.ndarray]] = {"y": [], "p": [], "g": [], "split": []}
    classes: list[str] | None = None
    with progress() as bar:
        task = bar.add_task("report", total=len(slide_ids), unit="slide")
        for sid in slide_ids:
            try:
                sec, df, gt = _slide(ws, model_id, sid, cohort, out, top_k, threshold, thumbnail_size)
            except HistokdError as e:
                log.warning("report: skipping slide %s: %s", sid, e)
                skipped.append({"slide_id": sid, "reason": str(e)})
            else:
                sections.append(sec)
                tile_frames.append(df)
                classes = classes or sec["classes"]
                if gt is not None:
                    inst["y"].append(gt["y"])
                    inst["p"].append(gt["p"])
                    inst["g"].append(np.full(len(gt["y"]), len(inst["g"])))
                    inst["split"].append(np.full(len(gt["y"]), sec["split"] or "all", dtype=object))
            bar.advance(task)

    if tile_frames:
        write_csv(out / "tiles.csv", pd.concat(tile_frames, ignore_index=True))
    bags = _bags_frame(pred_dir, sections, cohort)
    classes = classes or _classes_from(pred_dir, bags)
    ctx = _evaluation(bags, inst, classes, threshold, n_boot, seed, out)
    ctx.update(
        model_id=model_id,
        method=_first(sections, "method") or str(pred_metrics.get("method", "")),
        classes=classes,
        positive=classes[positive_index(classes)] if classes else "",
        threshold=threshold,
        slides=sections,
        skipped=skipped,
        metrics_json=[("predictions/metrics.json", flatten_metrics(pred_metrics)),
                      ("models/metrics.json", flatten_metrics(model_metrics))],
        n_slides=len(sections),
        n_tiles=int(sum(len(df) for df in tile_frames)),
        version=_version(),
    )
    index = out / "index.html"
    write_text(index, render_report_html(ctx))
    log.info("report: %d slides (%d skipped) -> %s", len(sections), len(skipped), index)
    return index


def _slide(
    ws: Workspace, model_id: str, sid: str, cohort: pd.DataFrame, out: Path, top_k: int, threshold: float,
    thumbnail_size: int,
) -> tuple[dict, pd.DataFrame, dict | None]:
    """Everything of one slide: heatmap, GeoJSON, tile rows, top / bottom tiles, tile ground truth."""
    from histokd.slides.reader import open_slide

    pred_path = ws.predictions_h5(model_id, sid)
    if not pred_path.is_file():
        raise InputError(f"{pred_path}: prediction missing; run `histokd label` for this slide")
    if sid not in cohort.index:
        raise InputError(f"{ws.cohort_csv}: slide {sid!r} is not in the workspace cohort; re-run `histokd tile`")
    row = cohort.loc[sid]
    pred = read_prediction(pred_path)
    pos = positive_index(pred.classes)
    tiles_attrs = _tiles_attrs(ws, sid)
    psl0 = pred.patch_size_level0 or float(tiles_attrs.get("patch_size_level0", 0) or 0)
    if psl0 <= 0:
        raise InputError(f"{pred_path}: attr patch_size_level0 missing; run `histokd label` again")
    p_pos = pred.probs[:, pos]

    with open_slide(row["path"]) as slide:
        thumb = slide.get_thumbnail(thumbnail_size)
        dims = slide.dimensions
        gt_overlay, gt_fraction = None, None
        mask_path = row.get("mask_path")
        if isinstance(mask_path, str) and mask_path:
            from histokd.slides.masks import load_mask, tile_fractions

            gmask, gds = load_mask(mask_path, dims)
            gt_overlay = Overlay(gmask, gds)
            gt_fraction = tile_fractions(gmask, gds, pred.coords, psl0)
        pixel = Overlay(pred.mask > 0, pred.mask_downsample) if pred.mask is not None else None
        png = render_heatmap(
            thumb, dims, pred.coords, psl0, p_pos, ground_truth=gt_overlay, pixel_mask=pixel,
            title=f"{sid}  (label: {row.get('label', '?')}, bag P({pred.classes[pos]}) = {pred.bag_probs[pos]:.3f})",
            label=f"P({pred.classes[pos]})",
        )
        order = np.argsort(-p_pos, kind="stable")
        k = min(top_k, len(order))
        top = [_tile_card(slide, pred, i, pos, psl0, tiles_attrs) for i in order[:k]]
        bottom = [_tile_card(slide, pred, i, pos, psl0, tiles_attrs) for i in order[::-1][:k]]

    write_bytes(out / "heatmaps" / f"{sid}.png", png)
    write_geojson(out / "geojson" / f"{sid}.geojson",
                  prediction_geojson(pred.coords, psl0, pred.probs, pred.classes, threshold, slide_id=sid))
    df = tiles_frame(sid, pred.coords, pred.probs, pred.classes, pred.scores, gt_fraction)
    split = str(row.get("split")) if isinstance(row.get("split"), str) else ""
    sec = {
        "slide_id": sid,
        "label": str(row.get("label", "")),
        "split": split,
        "classes": pred.classes,
        "method": str(pred.attrs.get("method", "")),
        "bag_prob": float(pred.bag_probs[pos]),
        "pred": pred.classes[int(np.argmax(pred.bag_probs))],
        "n_tiles": int(len(pred.coords)),
        "n_regions_tiles": int((p_pos >= threshold).sum()),
        "has_gt": gt_overlay is not None,
        "has_mask": pixel is not None,
        "heatmap": _data_uri(png, "image/png"),
        "top": top,
        "bottom": bottom,
    }
    gt = None
    if gt_fraction is not None:
        gt = {"y": (gt_fraction > GT_TILE_FRACTION).astype(int), "p": p_pos.astype(np.float64)}
    return sec, df, gt


def _tile_card(slide: Any, pred: SlidePrediction, i: int, pos: int, psl0: float, tiles_attrs: dict) -> dict:
    """One tile image (read at the tile's mpp, shown at :data:`TILE_DISPLAY_PX`) with its probability."""
    from PIL import Image

    x, y = (int(v) for v in pred.coords[i])
    size = int(tiles_attrs.get("patch_size", 0) or 0)
    mpp = float(tiles_attrs.get("target_mpp", 0) or 0)
    if size <= 0 or mpp <= 0:  # no tile grid file: read the tile's level-0 extent at display size
        size, mpp = TILE_DISPLAY_PX, psl0 * slide.mpp / TILE_DISPLAY_PX
    img = Image.fromarray(slide.read_region_mpp(x, y, size, mpp))
    if img.size != (TILE_DISPLAY_PX, TILE_DISPLAY_PX):
        img = img.resize((TILE_DISPLAY_PX, TILE_DISPLAY_PX), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return {"x": x, "y": y, "prob": float(pred.probs[i, pos]), "img": _data_uri(buf.getvalue(), "image/jpeg")}


# ---------------------------------------------------------------------------------------------------------
# metrics and plots
# ---------------------------------------------------------------------------------------------------------


def _evaluation(
    bags: pd.DataFrame, inst: dict[str, list[np.ndarray]], classes: list[str], threshold: float, n_boot: int,
    seed: int, out: Path,
) -> dict:
    """Metric tables (bag and tile level, per split) and the four plots, written to ``plots/``."""
    ctx: dict[str, Any] = {"bag_tables": [], "tile_tables": [], "plots": []}
    if not classes:
        return ctx
    pos = positive_index(classes)
    pos_name = classes[pos]
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if len(bags) and f"prob_{pos_name}" in bags:
        y = (bags["label"].astype(str) == pos_name).to_numpy().astype(int)
        s = bags[f"prob_{pos_name}"].to_numpy(dtype=np.float64)
        for split in _splits(bags["split"]):
            sel = (bags["split"] == split).to_numpy() if split != "all" else np.ones(len(bags), bool)
            rows = binary_metrics(y[sel], s[sel], threshold, n_boot=n_boot, seed=seed,
                                  names=["AUC", "accuracy", "balanced accuracy", "F1"])
            ctx["bag_tables"].append({"split": split, "n": int(sel.sum()), "n_pos": int(y[sel].sum()), "rows": rows})
        main = _main_split(bags["split"])
        sel = (bags["split"] == main).to_numpy() if main != "all" else np.ones(len(bags), bool)
        roc[f"slides ({main})"] = (y[sel], s[sel])
    if inst["y"]:
        y_t = np.concatenate(inst["y"])
        p_t = np.concatenate(inst["p"])
        g_t = np.concatenate(inst["g"])
        sp_t = np.concatenate(inst["split"])
        for split in _splits(pd.Series(sp_t)):
            sel = sp_t == split if split != "all" else np.ones(len(y_t), bool)
            rows = binary_metrics(y_t[sel], p_t[sel], threshold, groups=g_t[sel], n_boot=n_boot, seed=seed,
                                  names=["AUC", "average precision", "F1", "balanced accuracy"])
            ctx["tile_tables"].append({"split": split, "n": int(sel.sum()), "n_pos": int(y_t[sel].sum()), "rows": rows})
        main = _main_split(pd.Series(sp_t))
        sel = sp_t == main if main != "all" else np.ones(len(y_t), bool)
        roc[f"tiles ({main})"] = (y_t[sel], p_t[sel])
    plots: list[tuple[str, str, bytes]] = []
    if roc:
        plots.append(("roc", "ROC", plot_roc(roc, f"ROC, positive class {pos_name}")))
        plots.append(("pr", "Precision-recall", plot_pr(roc, f"Precision-recall, {pos_name}")))
        plots.append(("calibration", "Calibration", plot_calibration(roc, title=f"Calibration of P({pos_name})")))
    if len(bags) and "pred" in bags:
        main = _main_split(bags["split"])
        sub = bags if main == "all" else bags[bags["split"] == main]
        cm = confusion_matrix(sub["label"].astype(str).tolist(), sub["pred"].astype(str).tolist(), classes)
        plots.append(("confusion", "Confusion matrix", plot_confusion(cm, classes, f"Slides ({main})")))
    for name, title, png in plots:
        write_bytes(out / "plots" / f"{name}.png", png)
        ctx["plots"].append({"name": name, "title": title, "img": _data_uri(png, "image/png")})
    return ctx


def _splits(col: pd.Series) -> list[str]:
    present = [s for s in ("test", "val", "train") if (col == s).any()]
    return present if present else ["all"]


def _main_split(col: pd.Series) -> str:
    """The split the curves are drawn on: test when there is one (never tuned on), else everything."""
    return "test" if (col == "test").any() else "all"


def _bags_frame(pred_dir: Path, sections: list[dict], cohort: pd.DataFrame) -> pd.DataFrame:
    """``bags.csv`` with labels as class names and a ``split`` column ('all' where unknown); built from
    the reported slides when the file is missing."""
    path = pred_dir / "bags.csv"
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
            r[f"prob_{s['classes'][positive_index(s['classes'])]}"] = s["bag_prob"]
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


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------


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
            return {k: _attr(v) for k, v in f.attrs.items()}
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


def _version() -> str:
    from histokd import __version__

    return __version__


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# ---------------------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------------------


def render_report_html(ctx: dict[str, Any]) -> str:
    """Render ``templates/report.html`` with jinja2 autoescaping: every text value (slide ids, labels,
    class names, metric keys) is HTML-escaped; only the base64 data URIs become attributes."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("histokd.outputs", "templates"),
        autoescape=jinja2.select_autoescape(["html"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["metric"] = lambda r: r.formatted() if isinstance(r, MetricRow) else str(r)
    env.filters["pct"] = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
    defaults = {"bag_tables": [], "tile_tables": [], "plots": [], "slides": [], "skipped": [], "metrics_json": [],
                "method": "", "classes": [], "positive": "", "threshold": 0.5, "n_slides": 0, "n_tiles": 0,
                "version": _version(), "model_id": ""}
    return env.get_template("report.html").render(**{**defaults, **ctx})
