"""``histokd label``: predictions for every slide with features -> ``RUN/predictions/<id>/`` + metrics.

Per slide (contract 7) ``<slide>.h5``: ``instance_probs`` (N, C) float32, ``coords`` (N, 2) int64,
``instance_scores`` (N,) float32 where the method gives them, ``mask`` (H, W) uint8 + attr
``mask_downsample`` where it segments; attrs ``bag_probs``, ``classes`` (JSON), ``model_id``, ``method``,
``patch_size_level0``, ``slide_id``. Plus ``bags.csv`` and ``metrics.json``: per split (and ``all``) bag
AUC / accuracy / balanced accuracy / F1 with stratified-bootstrap 95% CIs, and instance AUC / AP where
instance labels exist (contract 6), from ``instance_probs`` and, separately, ``instance_scores``.
Slides whose prediction already exists for this model are read back, not recomputed (``overwrite``
forces). A slide that fails is reported and the others go on.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from histokd.data.bags import BagDataset, ensure_instance_labels
from histokd.errors import FeatureError, ModelError
from histokd.runner import run_slides
from histokd.predictions import is_prediction_of, read_prediction, source_key, write_prediction
from histokd.workspace import ModelFiles, Workspace, file_sha256, read_csv, write_csv, write_json

log = logging.getLogger("histokd")


@dataclass
class LabelResult:
    directory: Path
    n_slides: int = 0  # slides with a prediction
    failures: dict[str, str] = field(default_factory=dict)  # one line per slide (no prediction, or no tile truth)
    metrics: dict[str, Any] = field(default_factory=dict)
    n_total: int = 0  # distinct slides attempted: predicted or failed, each counted once


def label(
    workspace: str | os.PathLike[str] | Workspace,
    model: str,
    features: str | None = None,
    overwrite: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    tumour_threshold: float = 0.5,
    wait: bool = False,
) -> LabelResult:
    """Label every slide with features using ``model``; write predictions and metrics.

    ``model``: a model id (``RUN/models/<model>/``), or a model bundle from elsewhere (a model folder or a
    ``.tar.gz`` from ``histokd export-model``), installed into ``RUN/models/<id>/`` first (its portable files
    only). Where the model has a ``bundle.json`` the feature set must have been made as the model's (encoder
    and weights, dimension, µm/px, tile size, precision, stain normalisation); a mismatch is refused with one
    line. ``LabelResult.directory`` is ``RUN/predictions/<id>/``.
    """
    from histokd.methods.base import SlideLabeler, load_labeler, model_positive_class

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    model, meta, features = _model_and_features(ws, model, features, wait)
    mdir = ws.model_dir(model)
    labeler = load_labeler(mdir)
    classes = list(labeler.classes)
    out = ws.predictions_dir(model)
    with ws.writer(out, wait=wait):
        failures = ensure_instance_labels(ws, features, threshold=tumour_threshold)
        ds = BagDataset.from_workspace(ws, features, classes=classes, require_labels=False, preload=False)
        for sid, why in ds.skipped.items():  # empty bags, missing or damaged feature files: failures, not silence
            failures[sid] = why
        reads_pixels = isinstance(labeler, SlideLabeler)  # segmenters (ifkd, end-to-end weno)
        _check_feature_dim(ws, ds, model, meta, features, reads_pixels)
        pos = model_positive_class({**meta, "classes": classes})  # decided at training, stored with the model
        splits = _model_splits(mdir)
        slides = _SlideLabelling(ws, model, ds, labeler, meta, classes, pos, overwrite, reads_pixels)
        run = run_slides(range(len(ds.records)), key=lambda i: ds.records[i].slide_id, work=slides.predict,
                         resume=slides.read_back, description="label", total=len(ds))
        failures.update(run.failures)
        rows, inst = [], []
        patients: dict[str, str | None] = {}
        for sid, (rec, bag_probs, probs, scores, inst_labels) in run.results:
            split = splits.get(sid, rec.split) or ""
            rows.append((sid, split, rec.label, np.asarray(bag_probs, np.float64)))
            patients[sid] = rec.patient
            if inst_labels is not None:
                inst.append((split, np.asarray(inst_labels), np.asarray(probs)[:, pos],
                             None if scores is None else np.asarray(scores).reshape(-1)))
        _write_bags_csv(ws.predictions_bags_csv(model), rows, classes)
        metrics = evaluate_predictions(rows, inst, classes, n_boot, seed, positive=pos, patients=patients)
        if reads_pixels:  # pixel masks: PNGs + Dice/IoU/AUC/Hausdorff/FROC per split
            from histokd.pipeline.pixel_outputs import finish_pixel_outputs

            metrics["pixel"] = finish_pixel_outputs(ws, model)
        elif rows:  # any tile labeller: the pseudo-masks its tile probabilities paint, where the cohort has masks
            from histokd.pipeline.pixel_outputs import painted_pixel_metrics

            painted = painted_pixel_metrics(ws, model, splits=splits)
            if painted is not None:
                metrics["pixel_painted"] = painted
        metrics.update({"model_id": model, "method": meta["method"], "features": features, "failures": failures})
        write_json(ws.predictions_metrics(model), metrics)
        return LabelResult(out, len(rows), failures, metrics, n_total=len({r[0] for r in rows} | set(failures)))


def _model_and_features(ws: Workspace, model: str, features: str | None, wait: bool) -> tuple[str, dict, str]:
    """(model id, its stored meta, the feature set to label): a bundle from elsewhere is installed first,
    and where the model has a ``bundle.json`` the feature set must have been made as the model's."""
    from histokd.methods.base import read_model_meta
    from histokd.pipeline.bundle import check_features, find_feature_set, read_bundle, resolve_model

    model = resolve_model(ws, model, wait=wait)
    mdir = ws.model_dir(model)
    meta = read_model_meta(mdir)
    bundle = read_bundle(mdir) if ModelFiles(mdir).bundle.is_file() else None
    if bundle is not None and not features:
        features = find_feature_set(bundle, ws, model)
    features = features or meta.get("features")
    if not features:
        from histokd.pipeline.train import pick_features

        features = pick_features(ws, None)
    if bundle is not None:
        check_features(bundle, ws, features, model)
    return model, meta, features


def _check_feature_dim(ws: Workspace, ds: BagDataset, model: str, meta: dict, features: str,
                       reads_pixels: bool) -> None:
    in_dim = None if reads_pixels else meta.get("in_dim")  # pixel labellers: no feature dimension
    if in_dim is not None and int(in_dim) != ds.dim:
        raise FeatureError(
            f"{ws.features_dir(features)}: features are {ds.dim}-d but model {model!r} was trained on {in_dim}-d "
            f"features ({meta.get('features', 'another feature set')}); label features of the model's own "
            f"encoder (--features), or retrain the model on these"
        )


class _SlideLabelling:
    """One slide's prediction (record i of the dataset): read back when this model already predicted these
    features (``resume``), else predicted and written (contract 7)."""

    def __init__(self, ws: Workspace, model: str, ds: BagDataset, labeler: Any, meta: dict,
                 classes: list[str], pos: int, overwrite: bool, reads_pixels: bool) -> None:
        self.ws, self.model, self.ds, self.labeler, self.meta = ws, model, ds, labeler, meta
        self.classes, self.pos, self.overwrite, self.reads_pixels = classes, pos, overwrite, reads_pixels
        self.weights_sha = file_sha256(ws.model_files(model).weights)

    def read_back(self, i: int) -> tuple | None:
        rec = self.ds.records[i]
        path = self.ws.predictions_h5(self.model, rec.slide_id)
        key = source_key(self.weights_sha, rec.path)
        if path.exists() and not self.overwrite and is_prediction_of(path, self.model, key):
            p = read_prediction(path)
            return rec, p.bag_probs, p.probs, p.scores, self.ds[i].instance_labels
        return None

    def predict(self, i: int) -> tuple:
        rec = self.ds.records[i]
        sid = rec.slide_id
        key = source_key(self.weights_sha, rec.path)
        bag = self.ds[i]
        if self.reads_pixels:  # segmenters read the slide's pixels, through the bag's slide
            pred = self.labeler.predict_slide(self.ds.slide(i), bag.features.numpy(), bag.coords,
                                              _feature_attr(rec.path, "patch_size_level0"))
        else:
            pred = self.labeler.predict(bag.features.numpy())
        coords = bag.coords if bag.coords is not None else np.zeros((len(bag.features), 2))
        write_prediction(self.ws.predictions_h5(self.model, sid), pred, coords,
                         {"classes": json.dumps(self.classes), "positive_class": self.classes[self.pos],
                          "model_id": self.model, "method": self.meta["method"], "source_key": key,
                          "slide_id": sid, "patch_size_level0": _feature_attr(rec.path, "patch_size_level0")})
        return rec, pred.bag_probs, pred.instance_probs, pred.instance_scores, bag.instance_labels


def _feature_attr(path: Path | None, key: str) -> Any:
    if path is None:
        return None
    with h5py.File(path, "r") as f:
        return f.attrs.get(key)


def _model_splits(mdir: Path) -> dict[str, str]:
    p = ModelFiles(mdir).splits
    if not p.exists():
        return {}
    try:
        df = read_csv(p)
    except (OSError, ValueError) as e:  # pandas' ParserError is a ValueError
        raise ModelError(f"{p}: unreadable ({str(e)[:120]}); retrain the model with `histokd train`") from None
    if not {"slide_id", "split"} <= set(df.columns):
        raise ModelError(f"{p}: needs columns slide_id,split; retrain the model with `histokd train`")
    return dict(zip(df["slide_id"], df["split"]))


def _write_bags_csv(path: Path, rows: list[tuple[str, str, int, np.ndarray]], classes: list[str]) -> Path:
    """``slide_id,split,label,pred,prob_<class>...`` (label empty when unknown; probabilities to 6 decimals)."""
    header = ["slide_id", "split", "label", "pred", *(f"prob_{c}" for c in classes)]
    body = ([s, sp, classes[y] if y >= 0 else "", classes[int(p.argmax())], *(float(v) for v in p)]
            for s, sp, y, p in rows)
    return write_csv(path, header, body, float_format="%.6f")


def _with_cis(metrics: dict[str, tuple[float, float, float]]) -> dict[str, Any]:
    """``{metric: (value, low, high)}`` as metrics.json writes it: ``{metric: {value, ci95: [low, high]}}``."""
    return {m: {"value": v, "ci95": [lo, hi]} for m, (v, lo, hi) in metrics.items()}


def evaluate_predictions(rows: list[tuple[str, str, int, np.ndarray]], inst: list[tuple], classes: list[str],
                         n_boot: int = 1000, seed: int = 0, positive: int | None = None,
                         patients: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Bag metrics with bootstrap CIs per split and ``all``; pooled instance AUC/AP where labels exist.
    ``positive``: index of the model's stored positive class (default: the rule). ``patients``: slide id ->
    patient id; where they group slides, each split also gets ``patients``: the bag metrics per patient
    (:func:`histokd.evaluate.patients.aggregate_patients`)."""
    from histokd.classes import positive_class
    from histokd.evaluate.bootstrap import bootstrap_bag_metrics
    from histokd.evaluate.metrics import instance_metrics
    from histokd.evaluate.patients import aggregate_patients, has_patients

    patient_of = patients or {}
    per_patient = has_patients([patient_of.get(r[0]) for r in rows], [r[0] for r in rows])

    pos = positive_class(classes) if positive is None else positive
    out: dict[str, Any] = {"classes": classes, "positive_class": classes[pos], "splits": {}}
    names = sorted({r[1] for r in rows if r[1]}) + ["all"]
    for name in names:
        sel = [r for r in rows if (name == "all" or r[1] == name) and r[2] >= 0]
        entry: dict[str, Any] = {"n_bags": len(sel)}
        if sel:
            y = np.array([r[2] for r in sel])
            P = np.stack([r[3] for r in sel])
            entry.update(_with_cis(bootstrap_bag_metrics(y, P, pos, n_boot, seed=seed)))
            if per_patient:
                _, yp, Pp = aggregate_patients([r[0] for r in sel], [patient_of.get(r[0]) for r in sel], y, P, pos)
                entry["patients"] = {"n_patients": len(yp),
                                     **_with_cis(bootstrap_bag_metrics(yp, Pp, pos, n_boot, seed=seed))}
        isel = [t for t in inst if name == "all" or t[0] == name]
        if isel:
            labels = np.concatenate([t[1] for t in isel])
            entry["instance_from_probs"] = instance_metrics(labels, np.concatenate([t[2] for t in isel]))
            if all(t[3] is not None for t in isel):
                entry["instance_from_scores"] = instance_metrics(labels, np.concatenate([t[3] for t in isel]))
        out["splits"][name] = entry
    return out
