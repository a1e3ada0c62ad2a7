"""The parts of ``histokd report``: prediction files read back, tile images, metric tables and plots, the HTML.

The verb (``histokd report`` / ``histokd.report(...)``) is :func:`histokd.pipeline.report.report`: it reads
``RUN/predictions/<id>/`` (contract 7), the workspace cohort (``RUN/cohort.csv``) and the slides, and
writes ``RUN/reports/<id>/``::

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
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histokd.classes import positive_class
from histokd.evaluate.binary import MetricRow, binary_metrics, confusion_matrix
from histokd.outputs.heatmaps import write_bytes
from histokd.outputs.plots import plot_calibration, plot_confusion, plot_pr, plot_roc
from histokd.outputs.tables import format_metric
from histokd.predictions import SlidePrediction

#: Tile side (px) of the top / bottom tile images in the HTML.
TILE_DISPLAY_PX = 128


def tile_card(slide: Any, pred: SlidePrediction, i: int, pos: int, psl0: float, tiles_attrs: dict) -> dict:
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
    return {"x": x, "y": y, "prob": float(pred.probs[i, pos]), "img": data_uri(buf.getvalue(), "image/jpeg")}


# ---------------------------------------------------------------------------------------------------------
# metrics and plots
# ---------------------------------------------------------------------------------------------------------


def report_evaluation(
    bags: pd.DataFrame, inst: dict[str, list[np.ndarray]], classes: list[str], threshold: float, n_boot: int,
    seed: int, plot_path: Callable[[str], Path], positive: int | None = None,
    patients: dict[str, str | None] | None = None,
) -> dict:
    """Metric tables (bag and tile level, per split) and the four plots, written to ``plot_path(name)``; ``positive``
    is the index of the positive class stored with the model (default: the rule of
    :func:`histokd.classes.positive_class`). ``patients`` (slide id -> patient id): where they group slides, each
    split also gets a table per patient (:func:`histokd.evaluate.patients.aggregate_patients`)."""
    from histokd.evaluate.patients import aggregate_patients, has_patients

    ctx: dict[str, Any] = {"bag_tables": [], "tile_tables": [], "plots": []}
    if not classes:
        return ctx
    pos = positive_class(classes) if positive is None else positive
    pos_name = classes[pos]
    if len(bags) and "label" in bags:  # slides without a label (or of a class the model lacks) have no metrics
        bags = bags[bags["label"].astype(str).str.strip().isin([str(c) for c in classes]).to_numpy()]
        ctx["no_labels"] = not len(bags)
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if len(bags) and f"prob_{pos_name}" in bags:
        y = (bags["label"].astype(str) == pos_name).to_numpy().astype(int)
        s = bags[f"prob_{pos_name}"].to_numpy(dtype=np.float64)
        for split in _splits(bags["split"]):
            sel = (bags["split"] == split).to_numpy() if split != "all" else np.ones(len(bags), bool)
            rows = binary_metrics(y[sel], s[sel], threshold, n_boot=n_boot, seed=seed,
                                  names=["AUC", "accuracy", "balanced accuracy", "F1"])
            ctx["bag_tables"].append({"split": split, "n": int(sel.sum()), "n_pos": int(y[sel].sum()), "rows": rows})
            ids = bags["slide_id"].astype(str).to_numpy()[sel].tolist()
            pids = [(patients or {}).get(s) for s in ids]
            if has_patients(pids, ids):
                _, yp, pp = aggregate_patients(ids, pids, y[sel], np.stack([1 - s[sel], s[sel]], axis=1), 1)
                rows = binary_metrics(yp, pp[:, 1], threshold, n_boot=n_boot, seed=seed,
                                      names=["AUC", "accuracy", "balanced accuracy", "F1"])
                ctx["bag_tables"].append({"split": f"{split}, per patient (max over its slides)", "n": len(yp),
                                          "n_pos": int(yp.sum()), "rows": rows})
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
        write_bytes(plot_path(name), png)
        ctx["plots"].append({"name": name, "title": title, "img": data_uri(png, "image/png")})
    return ctx


PIXEL_ROWS = (("Dice (mean over tumour slides)", "dice_mean"), ("Dice (pixels pooled)", "dice_global"),
              ("IoU (mean)", "iou_mean"), ("pixel AUC", "pixel_auc"), ("FROC", "froc"),
              ("specificity on tumour-free slides", "specificity_neg"), ("Hausdorff (µm, mean)", "hausdorff_mean"))


def pixel_tables(pred_metrics: dict[str, Any], model_pixel: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's pixel tables from what ``label`` and ``train`` wrote: the pseudo-masks a tile labeller's
    probabilities paint (``pixel_painted``), a segmenter's own masks (``pixel``), and, for IFKD, its MIL
    pseudo-masks beside its student on the test slides (the model's ``pixel_metrics.json``)."""

    def rows(d: dict[str, Any]) -> list[tuple[str, str]]:
        out = []
        for name, key in PIXEL_ROWS:
            v = d.get(key)
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                out.append((name, f"{float(v):.3f}" if key != "hausdorff_mean" else f"{float(v):.0f}"))
        return out

    tables: list[dict[str, Any]] = []
    painted = pred_metrics.get("pixel_painted") or {}
    for split, d in (painted.get("splits") or {}).items():
        tables.append({"title": f"{split} · painted tile probabilities at {painted.get('work_mpp')} µm/px, "
                                f"threshold {painted.get('threshold')} ({painted.get('threshold_chosen_on')})",
                       "rows": rows(d)})
    for split, d in (pred_metrics.get("pixel") or {}).items():
        if isinstance(d, dict):
            tables.append({"title": f"{split} · predicted pixel mask", "rows": rows(d)})
    for key, what in (("mil", "MIL pseudo-masks (the teacher's)"), ("final", "IFKD student")):
        d = (model_pixel.get(key) or {}).get("test")
        if isinstance(d, dict):
            tables.append({"title": f"test · {what}, calibrated on validation", "rows": rows(d)})
    return [t for t in tables if t["rows"]]


def _splits(col: pd.Series) -> list[str]:
    present = [s for s in ("test", "val", "train") if (col == s).any()]
    return present if present else ["all"]


def _main_split(col: pd.Series) -> str:
    """The split the curves are drawn on: test when there is one (never tuned on), else everything."""
    return "test" if (col == "test").any() else "all"


def _version() -> str:
    from histokd import __version__

    return __version__


def data_uri(data: bytes, mime: str) -> str:
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
    env.filters["metric"] = lambda r: format_metric(r) if isinstance(r, MetricRow) else str(r)
    env.filters["pct"] = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
    defaults = {"bag_tables": [], "tile_tables": [], "plots": [], "slides": [], "skipped": [], "metrics_json": [],
                "method": "", "classes": [], "positive": "", "threshold": 0.5, "n_slides": 0, "n_tiles": 0,
                "version": _version(), "model_id": "", "no_labels": False, "any_ood": False,
                "view_base": None, "pixel_tables": [], "view_hint": "histokd view -w RUN", "view_export_hint": "histokd view -w RUN --export RUN/view"}
    return env.get_template("report.html").render(**{**defaults, **ctx})
