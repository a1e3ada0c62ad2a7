"""``histokd encoder probe`` and ``histokd encoder compare``: the linear probe on a workspace's tile labels,
and the encoder comparison (features, probe, downstream MIL) of ``docs/mfl.md``.

The probe's protocol and statistics are :mod:`histokd.evaluate.probe`'s; here the labelled tiles of the
train / test splits are collected from the workspace (contract 6 tile labels, written from the cohort's
masks when missing) and the results written to ``RUN/probes/``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from histokd.errors import FeatureError, InputError
from histokd.evaluate.probe import ProbeResult, markdown_table, score_probe
from histokd.workspace import Workspace, write_json, write_text

log = logging.getLogger("histokd")


def probe_path(ws: Workspace, features: str) -> Path:
    return ws.probe_json(features)


def collect_tile_set(
    ws: Workspace, features: str, splits: tuple[str, ...], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features ``[N, D]`` float32, labels ``[N]`` int8 (0/1) and slide index ``[N]`` int64 (0..slides-1)
    of the labelled tiles of ``splits``."""
    from histokd.data.bags import ensure_instance_labels, read_instance_labels
    from histokd.data.cohort import load_workspace_cohort
    from histokd.features.store import read_features

    df = load_workspace_cohort(ws).df
    if "split" not in df.columns:
        raise InputError(f"{ws.cohort_csv}: no split column; the probe trains on train slides and tests on test "
                         f"slides, so add a split column (train/val/test)")
    failures = ensure_instance_labels(ws, features, threshold=threshold)
    for sid, msg in failures.items():
        log.warning("probe: no tile labels for %s (%s)", sid, msg)
    xs, ys, gs, n_slides = [], [], [], 0
    for sid in df[df["split"].isin(splits)]["slide_id"]:
        if not ws.tiles_h5(sid).exists():
            log.warning("probe: %s has no tile grid (tiling failed?); slide skipped", sid)
            continue
        fpath = ws.features_h5(features, sid)
        lpath = ws.instance_labels_h5(features, sid)
        if not fpath.exists():
            raise FeatureError(f"{fpath}: no features for slide {sid}; run `histokd embed -w {ws.root} "
                               f"--encoder {features}` first")
        if not lpath.exists():
            continue  # a slide without a mask of the positive class: its tiles have no label
        ff = read_features(fpath)
        lab = read_instance_labels(lpath, len(ff))
        keep = lab >= 0
        if keep.any():
            xs.append(ff.features[keep])
            ys.append(lab[keep])
            gs.append(np.full(int(keep.sum()), n_slides, np.int64))
            n_slides += 1
    if not xs:
        raise InputError(f"{ws.cohort_csv}: no labelled tile in split(s) {', '.join(splits)}; the probe needs "
                         f"tumour masks (mask_path) for those slides")
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int8), np.concatenate(gs)


def linear_probe(
    workspace: str | os.PathLike[str] | Workspace,
    features: str,
    threshold: float = 0.5,
    seed: int = 0,
    C: float | None = None,
    train_splits: tuple[str, ...] = ("train",),
    test_splits: tuple[str, ...] = ("test",),
    max_iter: int = 2000,
    cv_folds: int = 4,
    write: bool = True,
    n_boot: int = 1000,
) -> ProbeResult:
    """Fit the probe on the training tiles of ``features`` (an encoder spec) and score it on the test tiles
    (:func:`histokd.evaluate.probe.score_probe`); writes ``RUN/probes/<encoder dir>.json`` when ``write``.

    ``C=None`` chooses the inverse L2 strength from ``C_GRID`` by slide-grouped out-of-fold AUC on the
    training slides; the decision threshold is always chosen on the same out-of-fold predictions.
    ``n_boot``: bootstrap resamples of the 95% CIs (as ``label --bootstrap``).
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    xtr, ytr, gtr = collect_tile_set(ws, features, tuple(train_splits), threshold)
    xte, yte, gte = collect_tile_set(ws, features, tuple(test_splits), threshold)
    for name, y in (("training", ytr), ("test", yte)):
        if len(np.unique(y)) < 2:
            raise InputError(f"{ws.root}: the {name} tiles of {features} are all of one class; the probe needs "
                             f"tumour and normal tiles in both the train and the test split")
    res = score_probe(xtr, ytr, gtr, xte, yte, gte, features=features, threshold=threshold, seed=seed, C=C,
                      max_iter=max_iter, cv_folds=cv_folds, n_boot=n_boot)
    if write:
        with ws.writer(ws.probes_dir()):  # one writer of RUN/probes/ at a time
            write_json(probe_path(ws, features), res.as_dict())
    return res


# ------------------------------------------------------------------------------------------------------
# Encoder comparison (linear probe + downstream MIL), the table of docs/mfl.md
# ------------------------------------------------------------------------------------------------------
COMPARE_COLUMNS = [
    ("encoder", "encoder"),
    ("dim", "D"),
    ("probe_auc", "probe AUC"),
    ("probe_auc_ci95", "probe AUC 95% CI"),
    ("probe_bacc", "probe bal. acc"),
    ("probe_bacc_ci95", "probe bal. acc 95% CI"),
    ("probe_acc", "probe acc"),
    ("bag_auc", "MIL bag AUC"),
    ("instance_auc", "MIL instance AUC (attention)"),
    ("instance_auc_probs", "MIL instance AUC (probs)"),
]


def compare_encoders(
    workspace: str | os.PathLike[str] | Workspace,
    encoders: list[str],
    mil_method: str | None = "abmil",
    seed: int = 0,
    threshold: float = 0.5,
    embed_kwargs: dict[str, Any] | None = None,
    n_boot: int = 1000,
) -> tuple[list[dict[str, Any]], str]:
    """For each encoder spec: features (:func:`~histokd.pipeline.embed.embed`, resumed when present), linear
    probe, and with ``mil_method`` a MIL teacher (:func:`~histokd.pipeline.train.train`) and its test-split
    bag / instance AUC (:func:`~histokd.pipeline.label.label`). Writes ``RUN/probes/comparison.json`` and
    ``comparison.md``; returns (rows, table).
    """
    from histokd.pipeline.embed import embed  # on use: the probe alone needs no torch

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    rows: list[dict[str, Any]] = []
    for spec in encoders:
        embed(ws, spec, **(embed_kwargs or {}))
        pr = linear_probe(ws, spec, threshold=threshold, seed=seed, n_boot=n_boot)
        row: dict[str, Any] = {"encoder": spec, "dim": pr.dim, "probe_auc": pr.auc,
                               "probe_auc_ci95": f"{pr.auc_ci95[0]:.3f}-{pr.auc_ci95[1]:.3f}",
                               "probe_bacc": pr.balanced_accuracy,
                               "probe_bacc_ci95": "{:.3f}-{:.3f}".format(*pr.balanced_accuracy_ci95),
                               "probe_acc": pr.accuracy, "probe_C": pr.C, "probe_cv_auc": pr.cv_auc,
                               "bag_auc": float("nan"), "instance_auc": float("nan"),
                               "instance_auc_probs": float("nan")}
        if mil_method:
            row.update(_mil_scores(ws, spec, mil_method, seed, n_boot))
        rows.append(row)
    table = markdown_table(rows, COMPARE_COLUMNS)
    out = ws.probes_dir()
    with ws.writer(out):
        write_json(ws.probes_comparison(".json"), {"rows": rows, "seed": seed, "mil_method": mil_method})
        write_text(ws.probes_comparison(".md"), table)
    return rows, table


def _mil_scores(ws: Workspace, features: str, method: str, seed: int, n_boot: int = 1000) -> dict[str, Any]:
    """Train ``method`` on ``features`` and label: test-split bag AUC and instance AUC (attention scores,
    and the model's instance probabilities) from ``RUN/predictions/<id>/metrics.json``."""
    from histokd.pipeline.label import label
    from histokd.pipeline.train import train

    model_dir = train(ws, features=features, method=method, seed=seed, overwrite=True)
    res = label(ws, model=model_dir.name, overwrite=True, seed=seed, n_boot=n_boot)
    test = res.metrics.get("splits", {}).get("test", {})

    def val(d: Any, key: str) -> float:
        v = d.get(key) if isinstance(d, dict) else None
        v = v.get("value") if isinstance(v, dict) else v
        return float(v) if isinstance(v, (int, float)) else float("nan")

    return {
        "model_id": model_dir.name,
        "bag_auc": val(test, "auc"),
        "instance_auc": val(test.get("instance_from_scores", {}), "auc"),
        "instance_auc_probs": val(test.get("instance_from_probs", {}), "auc"),
    }
