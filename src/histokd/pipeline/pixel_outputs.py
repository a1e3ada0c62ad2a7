"""Pixel outputs of a trained IFKD segmenter for every slide of a run (what ``histokd label`` writes).

``RUN/predictions/<id>/<slide>.h5`` (contract 7, with ``mask`` + attr ``mask_downsample``; written and read
by :mod:`histokd.predictions`), the mask PNG ``Workspace.predictions_mask_png`` (255 = tumour, the mask's
geometry) and ``Workspace.predictions_pixel_metrics`` (Dice, IoU, pixel AUC, Hausdorff, FROC per split on
the slides with a ground-truth mask). ``histokd label`` calls :func:`finish_pixel_outputs` after the slides
of a segmenting model; :func:`label_ifkd` does the whole run on its own (API and scripts).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histokd.data.slide_source import SlideSource
from histokd.errors import HistokdError
from histokd.methods.base import Prediction, SlideLabeler
from histokd.predictions import read_prediction, write_prediction
from histokd.runner import run_slides
from histokd.workspace import Workspace, atomic_path, write_json

log = logging.getLogger("histokd")


def write_mask_png(path: str | os.PathLike[str], mask: np.ndarray) -> Path:
    """8-bit PNG of a 0/1 mask [h, w] (255 = tumour), atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).save(tmp, format="PNG")
    return Path(path)


def write_slide_outputs(ws: Workspace, model_id: str, slide_id: str, pred: Prediction) -> None:
    """The extra file of a segmenting labeller beside the h5: the mask PNG."""
    if pred.mask is not None:
        write_mask_png(ws.predictions_mask_png(model_id, slide_id), pred.mask)


def _split_of(r: dict, splits: dict[str, str] | None = None) -> str:
    """A cohort row's split: the model's (``splits``) where given, else the cohort's ``split`` column, else ``all``."""
    s = (splits or {}).get(str(r["slide_id"]))
    if s:
        return s
    return str(r.get("split")) if r.get("split") is not None and str(r.get("split")) != "nan" else "all"


def _summarise_splits(per_split: dict[str, list[tuple[np.ndarray, np.ndarray, float]]],
                      threshold: float) -> dict[str, Any]:
    """Per split (and ``all`` where there are several): :func:`~histokd.evaluate.pixel.summarise_slides` of the
    (probability map, ground truth, µm per map px) triples at ``threshold``, with the FROC score."""
    from histokd.evaluate.pixel import detect_lesions, froc, summarise_slides

    groups = dict(per_split)
    if len(groups) > 1:
        groups["all"] = [x for v in per_split.values() for x in v]
    out: dict[str, Any] = {}
    for split, items in groups.items():
        maps, gts = [p for p, _, _ in items], [g for _, g, _ in items]
        s = summarise_slides(maps, gts, threshold, [sp for _, _, sp in items])
        s["froc"] = froc([detect_lesions(p, threshold) for p in maps], gts).score
        out[split] = s
    return out


def pixel_metrics(ws: Workspace, model_id: str) -> dict[str, Any]:
    """Dice, IoU, pixel AUC, Hausdorff (µm) and FROC of the written masks against the cohort's GT masks,
    per split (and ``all``). FROC candidates: components of the mask, scored by their tile maximum."""
    from histokd.data.cohort import load_workspace_cohort
    from histokd.segmentation.io import resize_mask
    from histokd.slides.masks import load_mask

    df = load_workspace_cohort(ws).df
    per_split: dict[str, list[tuple[np.ndarray, np.ndarray, float]]] = {}
    for r in df.to_dict("records"):
        mp = r.get("mask_path")
        h5 = ws.predictions_h5(model_id, str(r["slide_id"]))
        if mp is None or str(mp) in ("", "nan") or not h5.exists():
            continue
        pred = read_prediction(h5)
        if pred.mask is None:
            continue
        mask, ds = pred.mask > 0, float(pred.mask_downsample or 0.0)
        from histokd.slides.reader import open_slide

        with open_slide(r["path"], mpp=r.get("level0_mpp")) as sl:  # the mpp it was tiled with (--slide-mpp)
            dims0, mpp0 = tuple(sl.dimensions), float(sl.mpp)
        gt, _ = load_mask(mp, dims0)
        gt = resize_mask(gt, mask.shape)
        per_split.setdefault(_split_of(r), []).append((mask.astype(np.float32), gt,
                                                        mpp0 * (ds or dims0[0] / mask.shape[1])))
    return _summarise_splits(per_split, 0.5)


#: µm/px at which ``label`` paints a tile labeller's probabilities into pseudo-masks (IFKD's default work_mpp,
#: so the figures compare with an IFKD student's)
PAINT_MPP = 8.0


def painted_pixel_metrics(ws: Workspace, model_id: str, threshold: float | None = None,
                          work_mpp: float = PAINT_MPP, splits: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Pixel metrics of the pseudo-masks a tile labeller's predictions paint (what IFKD distils): per slide with a
    ground-truth mask, the positive-class tile probabilities painted at ``work_mpp`` (overlaps averaged,
    :func:`histokd.segmentation.pseudo.tile_map`) and read as a probability map; Dice / IoU / Hausdorff at
    ``threshold``, pooled pixel AUC and FROC per split (and ``all``), as :func:`pixel_metrics` gives a
    segmenter's masks. ``splits``: slide id -> split as the model was trained (its ``splits.csv``, as ``label``'s
    bag metrics use it; the cohort's ``split`` column where a slide is not in it). ``threshold=None``: the one of 0.1, 0.2, ..., 0.9 with the best
    global Dice on the ``val`` slides (0.5 without them), never chosen on test. Slides whose files cannot be read
    are left out (``label`` has already counted them). None when no slide of the cohort has a tumour mask."""
    from histokd.data.cohort import load_workspace_cohort
    from histokd.evaluate.pixel import summarise_slides
    from histokd.segmentation.io import resize_mask
    from histokd.segmentation.pseudo import tile_map
    from histokd.slides.masks import load_mask
    from histokd.slides.reader import open_slide

    if not ws.cohort_csv.is_file():  # features imported without a cohort: nothing to paint against
        return None
    rows = [r for r in load_workspace_cohort(ws).df.to_dict("records")
            if r.get("mask_path") is not None and str(r.get("mask_path")) not in ("", "nan")]
    if not rows:
        return None
    per_split: dict[str, list[tuple[np.ndarray, np.ndarray, float]]] = {}
    for r in rows:
        mp, h5 = r["mask_path"], ws.predictions_h5(model_id, str(r["slide_id"]))
        if not h5.exists():
            continue
        try:
            pred = read_prediction(h5)
            with open_slide(r["path"], mpp=r.get("level0_mpp")) as sl:
                dims0, mpp0 = tuple(sl.dimensions), float(sl.mpp)
            ds = work_mpp / mpp0
            shape = (max(1, int(round(dims0[1] / ds))), max(1, int(round(dims0[0] / ds))))
            psl0 = float(pred.patch_size_level0 or 0)
            if psl0 <= 0 or not len(pred.coords):
                continue
            prob, _ = tile_map(pred.probs[:, pred.positive], pred.coords, psl0, shape,
                               (dims0[0] / shape[1], dims0[1] / shape[0]))
            gt = resize_mask(load_mask(mp, dims0)[0], shape)
        except (HistokdError, OSError) as e:
            log.warning("pixel metrics: slide %s left out: %s", r["slide_id"], e)
            continue
        per_split.setdefault(_split_of(r, splits), []).append((prob, gt, work_mpp))
    if threshold is None:
        threshold, chosen_on = 0.5, "default"
        val = per_split.get("val", [])
        if val and any(g.any() for _, g, _ in val):
            cands = [round(0.1 * k, 1) for k in range(1, 10)]
            scores = [summarise_slides([p for p, _, _ in val], [g for _, g, _ in val], t)["dice_global"] for t in cands]
            threshold, chosen_on = cands[int(np.nanargmax(scores))], "val"
    else:
        chosen_on = "given"
    return {"source": "painted tile probabilities", "work_mpp": work_mpp, "threshold": threshold,
            "threshold_chosen_on": chosen_on, "splits": _summarise_splits(per_split, threshold)}


def finish_pixel_outputs(ws: Workspace, model_id: str) -> dict[str, Any]:
    """After ``histokd label``: a PNG per predictions h5 that has a ``mask``, and ``pixel_metrics.json``."""
    for h5 in sorted(ws.predictions_dir(model_id).glob("*.h5")):
        if h5.name.startswith("."):
            continue
        pred = read_prediction(h5)
        if pred.mask is not None:
            write_mask_png(ws.predictions_mask_png(model_id, h5.stem), pred.mask)
    metrics = pixel_metrics(ws, model_id)
    write_json(ws.predictions_pixel_metrics(model_id), metrics)
    return metrics


def label_ifkd(workspace: str | os.PathLike[str], model_id: str, overwrite: bool = True) -> dict[str, str]:
    """Segment every slide that has tiles; returns ``{slide_id: error}`` for the slides that failed."""
    from histokd.data.cohort import load_workspace_cohort
    from histokd.methods.base import load_labeler, model_positive_class, read_model_meta
    from histokd.slides.tiling import read_tiles

    ws = Workspace(workspace)
    lab = load_labeler(ws.model_dir(model_id))
    if not isinstance(lab, SlideLabeler):
        raise HistokdError(f"{ws.model_dir(model_id)}: model {model_id} does not segment pixels; use `histokd label`")
    classes = list(lab.classes)
    meta = read_model_meta(ws.model_dir(model_id))
    positive = classes[model_positive_class({**meta, "classes": classes})]  # stored with the model
    df = load_workspace_cohort(ws).df

    def done(r: dict) -> bool | None:
        return True if ws.predictions_h5(model_id, str(r["slide_id"])).exists() and not overwrite else None

    def segment(r: dict) -> bool:
        sid = str(r["slide_id"])
        grid = read_tiles(ws.tiles_h5(sid))
        ps = float(grid.attrs["patch_size_level0"])
        pred = lab.predict_slide(SlideSource.of(r), None, grid.coords, ps)
        write_prediction(ws.predictions_h5(model_id, sid), pred, grid.coords,
                         {"classes": classes, "positive_class": positive, "model_id": model_id,
                          "method": meta["method"], "slide_id": sid, "patch_size_level0": ps})
        write_slide_outputs(ws, model_id, sid, pred)
        return True

    run = run_slides(df.to_dict("records"), key=lambda r: str(r["slide_id"]), work=segment, resume=done,
                     description=f"ifkd label {model_id}", catch=(HistokdError,), failure_log="slide %s: %s")
    write_json(ws.predictions_pixel_metrics(model_id), pixel_metrics(ws, model_id))
    return run.failures
