"""Linear probe of frozen tile features on tile labels (tumour vs normal from the masks).

The probe measures how linearly separable the tumour tiles are in an encoder's feature space, which is
how More From Less encoders are compared with the H&E-only SSL control, ImageNet features and
handcrafted features. Protocol (fixed, seeded):

- tile labels: contract 6 (``RUN/features/<enc>/instance_labels/<slide>.h5``, a tile is tumour when its
  mask fraction is above ``threshold``; written here from the cohort's masks when missing); unknown (-1)
  tiles are dropped;
- training tiles: the slides of ``train_splits`` (default ``train``); test tiles: ``test_splits``
  (default ``test``). Slides never mix between the two;
- features standardised with the training tiles' mean/std, then L2-regularised logistic regression
  (lbfgs, ``C``), class-balanced weights so that the rarer tumour tiles count as much as normal ones;
- reported on the test tiles: accuracy and balanced accuracy at p = 0.5, ROC AUC with a stratified
  tile-bootstrap 95 % CI.

The result is written to ``RUN/probes/<encoder dir>.json``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histokd.errors import FeatureError, InputError
from histokd.workspace import Workspace, encoder_dirname, write_json

log = logging.getLogger("histokd")


@dataclass
class ProbeResult:
    encoder: str
    dim: int
    n_train: int
    n_test: int
    pos_train: int
    pos_test: int
    accuracy: float
    balanced_accuracy: float
    auc: float
    auc_ci95: tuple[float, float]
    seed: int
    threshold: float
    C: float
    train_slides: int
    test_slides: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_path(ws: Workspace, features: str) -> Path:
    return ws.root / "probes" / f"{encoder_dirname(features)}.json"


def collect_tile_set(
    ws: Workspace, features: str, splits: tuple[str, ...], threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Features ``[N, D]`` float32 and labels ``[N]`` int8 (0/1) of the labelled tiles of ``splits``."""
    from histokd.data.bags import ensure_instance_labels, instance_labels_path, read_instance_labels
    from histokd.data.cohort import load_workspace_cohort
    from histokd.features.store import read_features

    df = load_workspace_cohort(ws).df
    if "split" not in df.columns:
        raise InputError(f"{ws.cohort_csv}: no split column; the probe trains on train slides and tests on test "
                         f"slides, so add a split column (train/val/test)")
    failures = ensure_instance_labels(ws, features, threshold=threshold)
    for sid, msg in failures.items():
        log.warning("probe: no tile labels for %s (%s)", sid, msg)
    xs, ys, n_slides = [], [], 0
    for sid in df[df["split"].isin(splits)]["slide_id"]:
        fpath = ws.features_h5(features, sid)
        lpath = instance_labels_path(ws, features, sid)
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
            n_slides += 1
    if not xs:
        raise InputError(f"{ws.cohort_csv}: no labelled tile in split(s) {', '.join(splits)}; the probe needs "
                         f"tumour masks (mask_path) for those slides")
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int8), n_slides


def linear_probe(
    workspace: str | os.PathLike[str] | Workspace,
    features: str,
    threshold: float = 0.5,
    seed: int = 0,
    C: float = 1.0,
    train_splits: tuple[str, ...] = ("train",),
    test_splits: tuple[str, ...] = ("test",),
    max_iter: int = 2000,
    write: bool = True,
) -> ProbeResult:
    """Fit the probe on the training tiles of ``features`` (an encoder spec) and score it on the test tiles."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    xtr, ytr, ntr_s = collect_tile_set(ws, features, tuple(train_splits), threshold)
    xte, yte, nte_s = collect_tile_set(ws, features, tuple(test_splits), threshold)
    for name, y in (("training", ytr), ("test", yte)):
        if len(np.unique(y)) < 2:
            raise InputError(f"{ws.root}: the {name} tiles of {features} are all of one class; the probe needs "
                             f"tumour and normal tiles in both the train and the test split")
    mean = xtr.mean(0)
    std = np.maximum(xtr.std(0), 1e-6)  # constant features (dead units) must not divide by 0
    clf = LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced", random_state=seed)
    clf.fit((xtr - mean) / std, ytr)
    p = clf.predict_proba((xte - mean) / std)[:, 1]
    pred = (p >= 0.5).astype(np.int8)
    from histokd.evaluate.bootstrap import bootstrap_ci

    # tiles are resampled within each class (1000 resamples, seeded): the CI shows how few tumour tiles
    # a test split holds, not slide-to-slide variation
    _, lo, hi = bootstrap_ci(roc_auc_score, yte, p, n_boot=1000, seed=seed)
    res = ProbeResult(
        encoder=features, dim=int(xtr.shape[1]), n_train=len(ytr), n_test=len(yte), pos_train=int(ytr.sum()),
        pos_test=int(yte.sum()), accuracy=float(accuracy_score(yte, pred)),
        balanced_accuracy=float(balanced_accuracy_score(yte, pred)), auc=float(roc_auc_score(yte, p)),
        auc_ci95=(float(lo), float(hi)), seed=seed, threshold=threshold, C=C, train_slides=ntr_s, test_slides=nte_s,
    )
    if write:
        write_json(probe_path(ws, features), res.as_dict())
    log.info("probe %s: AUC %.3f, balanced acc %.3f, acc %.3f (%d test tiles)", features, res.auc,
             res.balanced_accuracy, res.accuracy, res.n_test)
    return res


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` (dicts); ``columns`` = [(key, header)]; floats with 3 decimals."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if np.isnan(v) else f"{v:.3f}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


# ------------------------------------------------------------------------------------------------------
# Encoder comparison (linear probe + downstream MIL), the table of docs/parts/mfl.md
# ------------------------------------------------------------------------------------------------------
COMPARE_COLUMNS = [
    ("encoder", "encoder"),
    ("dim", "D"),
    ("probe_auc", "probe AUC"),
    ("probe_auc_ci95", "probe AUC 95% CI"),
    ("probe_bacc", "probe bal. acc"),
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
) -> tuple[list[dict[str, Any]], str]:
    """For each encoder spec: features (``histokd.embed``, resumed when present), linear probe, and with
    ``mil_method`` a MIL teacher (``histokd.train``) and its test-split bag / instance AUC
    (``histokd.label``). Writes ``RUN/probes/comparison.json`` and ``comparison.md``; returns (rows, table).
    """
    import histokd

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    rows: list[dict[str, Any]] = []
    for spec in encoders:
        histokd.embed(ws, spec, **(embed_kwargs or {}))
        pr = linear_probe(ws, spec, threshold=threshold, seed=seed)
        row: dict[str, Any] = {"encoder": spec, "dim": pr.dim, "probe_auc": pr.auc,
                               "probe_auc_ci95": f"{pr.auc_ci95[0]:.3f}-{pr.auc_ci95[1]:.3f}",
                               "probe_bacc": pr.balanced_accuracy, "probe_acc": pr.accuracy,
                               "bag_auc": float("nan"), "instance_auc": float("nan"),
                               "instance_auc_probs": float("nan")}
        if mil_method:
            row.update(_mil_scores(ws, spec, mil_method, seed))
        rows.append(row)
    table = markdown_table(rows, COMPARE_COLUMNS)
    out = ws.root / "probes"
    write_json(out / "comparison.json", {"rows": rows, "seed": seed, "mil_method": mil_method})
    from histokd.workspace import write_text

    write_text(out / "comparison.md", table)
    return rows, table


def _mil_scores(ws: Workspace, features: str, method: str, seed: int) -> dict[str, Any]:
    """Train ``method`` on ``features`` and label: test-split bag AUC and instance AUC (attention scores,
    and the model's instance probabilities) from ``RUN/predictions/<id>/metrics.json``."""
    import histokd

    model_dir = histokd.train(ws, features=features, method=method, seed=seed, overwrite=True)
    res = histokd.label(ws, model=model_dir.name, overwrite=True, seed=seed)
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
