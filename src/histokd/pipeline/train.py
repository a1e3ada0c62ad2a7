"""``histokd train``: fit a registered method on a workspace's feature set -> ``RUN/models/<id>/``.

The folder (contract 7) holds ``model.pt``, ``config.yaml`` (method, full config, classes, in_dim, the
feature set, seed), ``classes.json``, ``splits.csv`` (the split each slide was used in), ``metrics.json``
(history, best epoch, validation metrics), ``train.log`` and ``bundle.json`` (how the inputs were made,
thresholds chosen on validation, the out-of-distribution summary: :mod:`histokd.pipeline.bundle`).
Splits come from the cohort's ``split``
column; without one a seeded patient-grouped, label-stratified 70/15/15 split is made and saved. The
validation split chooses the epoch; the test split is never used here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from histokd.config import deep_merge, parse_overrides, read_yaml, validate_config, write_yaml
from histokd.data.bags import BagDataset
from histokd.errors import FeatureError, InputError, ModelError
from histokd.pipeline.bundle import write_bundle
from histokd.workspace import Workspace, encoder_dirname, write_csv, write_json

log = logging.getLogger("histokd")


def pick_features(ws: Workspace, features: str | None) -> str:
    """The feature set to use: the one given, or the only one in ``RUN/features/``."""
    if features:
        return features
    root = ws.root / "features"
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise FeatureError(f"{root}: no feature sets; run `histokd embed -w {ws.root}` first")
    raise InputError(f"{root}: several feature sets ({', '.join(found)}); choose one with --features")


def build_config(method_cls: Any, config: str | os.PathLike[str] | dict[str, Any] | None,
                 overrides: dict[str, Any] | list[str] | None, **train_flags: Any) -> Any:
    """Method defaults <- YAML file or dict <- overrides (dict or ``key=value`` list) <- non-None flags."""
    data: dict[str, Any] = {}
    if isinstance(config, dict):
        data = dict(config)
    elif config is not None:
        data = read_yaml(config)
    ov = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    data = deep_merge(data, ov)
    flags = {k: v for k, v in train_flags.items() if v is not None}
    fields = method_cls.config_cls.model_fields
    if "max_epochs" in flags and "max_epochs" in fields:  # methods of several stages: caps every stage
        data = deep_merge(data, {"max_epochs": flags.pop("max_epochs")})
    if flags:  # accelerator, devices, nodes, strategy, precision: the method's RuntimeConfig (engine.runtime)
        block = "train" if "train" in fields else "runtime"
        data = deep_merge(data, {block: flags})
    cfg = validate_config(method_cls.config_cls, data, source=f"config of method {method_cls.name!r}")
    method_cls.check_config(cfg)
    return cfg


def assign_splits(ds: BagDataset, seed: int) -> BagDataset:
    """Keep the cohort's splits; else make a seeded stratified patient-grouped 70/15/15 split."""
    from histokd.evaluate.protocols import stratified_split

    if all(s in ("train", "val", "test") for s in ds.splits):
        return ds
    if any(s is not None for s in ds.splits):
        bad = sorted({str(s) for s in ds.splits if s not in ("train", "val", "test")})
        raise InputError(f"cohort split column has values {bad}; use train, val or test for every slide")
    log.info("no split column in the cohort: making a stratified 70/15/15 train/val/test split (seed %d)", seed)
    return ds.with_splits(stratified_split(ds.labels, ds.patients, 0.15, 0.15, seed))


def train(
    workspace: str | os.PathLike[str] | Workspace,
    features: str | None = None,
    method: str = "abmil",
    config: str | os.PathLike[str] | dict[str, Any] | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    seed: int = 0,
    model_id: str | None = None,
    devices: int | str | None = None,
    num_nodes: int | None = None,
    strategy: str | None = None,
    accelerator: str | None = None,
    max_epochs: int | None = None,
    precision: str | None = None,
    overwrite: bool = False,
    wait: bool = False,
) -> Path:
    """Train ``method`` on ``RUN/features/<features>/`` and write ``RUN/models/<id>/``; returns that folder."""
    import histokd.methods  # noqa: F401  (registers methods)
    from histokd.engine import log_to_file
    from histokd.methods.base import METHODS

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    features = pick_features(ws, features)
    mcls = METHODS.get(method)
    cfg = build_config(mcls, config, overrides, devices=devices, num_nodes=num_nodes, strategy=strategy,
                       accelerator=accelerator, max_epochs=max_epochs, precision=precision)
    model_id = model_id or f"{method}-{encoder_dirname(features)}-s{seed}"
    out = ws.model_dir(model_id)
    files = ws.model_files(model_id)
    from histokd.engine.loop import is_rank_zero

    # the extra processes of a `--strategy ddp` launch run this command again: rank 0 holds the lock
    with ws.writer(out, wait=wait) if is_rank_zero() else contextlib.nullcontext():
        if files.weights.exists() and not overwrite:
            raise ModelError(f"{out}: a model with this id exists; pass --overwrite or another --model-id")
        out.mkdir(parents=True, exist_ok=True)
        if is_rank_zero():  # the extra DDP ranks re-run this function while rank 0 logs to the file
            files.log.unlink(missing_ok=True)
        ds = assign_splits(BagDataset.from_workspace(ws, features), seed)
        tr, va = ds.split("train"), ds.split("val")
        if len(tr) == 0:
            raise InputError("no training slides (split == train); fix the cohort's split column")
        present = set(tr.labels.tolist())
        if len(present) < 2:
            names = ", ".join(repr(ds.classes[i]) for i in sorted(present))
            raise InputError(f"{ws.cohort_csv}: the training split has {len(tr)} slide(s), all of class {names}; "
                             f"training needs at least two classes: add slides of another class to the "
                             f"train split (split column) or fix the labels")
        with log_to_file(files.log):
            log.info("train %s on %s: %d train / %d val / %d test bags, classes %s, seed %d", method, features, len(tr),
                     len(va), len(ds.split("test")), ds.classes, seed)
            t0 = time.perf_counter()
            te = ds.split("test")
            labeler = mcls(seed=seed, log_path=None, held_out=te if len(te) else None).fit(tr, va if len(va) else None, cfg)
            seconds = time.perf_counter() - t0
        if not is_rank_zero():  # extra DDP processes (`--strategy ddp`) train but do not write
            return out
        labeler.save(out)
        meta = read_yaml(files.config)
        meta.update({"features": features, "seed": seed, "model_id": model_id})
        write_yaml(files.config, meta)
        write_csv(files.splits, ["slide_id", "split", "label"],
                  ([s, sp, ds.classes[y]] for s, sp, y in zip(ds.slide_ids, ds.splits, ds.labels)))
        metrics: dict[str, Any] = {"method": method, "features": features, "seed": seed, "fit_seconds": seconds,
                                   "n_bags": {k: len(ds.split(k)) for k in ("train", "val", "test")},
                                   "skipped": ds.skipped,
                                   "best_epoch": labeler.best_epoch,
                                   "history": labeler.history}
        val_probs = _bag_probs(labeler, va) if len(va) else None
        if val_probs is not None:
            from histokd.evaluate.metrics import bag_metrics

            metrics["val"] = bag_metrics(va.labels, val_probs, va.positive_index)
        write_json(files.metrics, metrics)
        write_bundle(ws, out, features, ds, labeler, val_probs)
        log.info("model written to %s (%.1f s)", out, seconds)
        return out


def _bag_probs(labeler: Any, ds: BagDataset) -> np.ndarray:
    """[n, C] bag probabilities of the model on the bags of ``ds``."""
    from histokd.methods.base import PixelBagLabeler

    if isinstance(labeler, PixelBagLabeler):  # models on pixels (end-to-end WENO) read the bag's tiles themselves
        return np.stack([labeler.predict_bag(ds, i).bag_probs for i in range(len(ds))])
    return np.stack([labeler.predict(ds[i].features.numpy()).bag_probs for i in range(len(ds))])
