"""``histokd bench`` / ``histokd.bench(...)``: compare registered methods on a bag dataset under a CV or split protocol.

For every fold: features are standardised with the *training* fold's statistics only; the method is fit
on the training part (and the validation part carved out of it, when ``val_fraction`` > 0); the test fold
is predicted with every instance. Per fold we record bag AUC / accuracy / balanced accuracy / F1 and,
where instance labels exist, instance AUC / AP pooled over the fold's test tiles, separately from the
Prediction's ``instance_probs`` (student / instance classifier) and ``instance_scores`` (teacher evidence,
e.g. attention). Summaries and the table are :mod:`histokd.evaluate.bench`'s. Any registered method plugs
in by name.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histokd.config import deep_merge, parse_overrides, validate_config
from histokd.data.bags import BagDataset
from histokd.data.benchmarks import dataset_source
from histokd.errors import InputError
from histokd.evaluate.bench import format_row, format_table, summarise
from histokd.evaluate.metrics import bag_metrics, instance_metrics
from histokd.evaluate.protocols import Fold, cv_folds, parse_protocol, split_fold
from histokd.progress import progress
from histokd.workspace import write_json

if TYPE_CHECKING:
    from histokd.methods.base import Labeler

__all__ = ["bench", "format_table", "run_fold"]

log = logging.getLogger("histokd")


def run_fold(method: str, ds: BagDataset, fold: Fold, overrides: dict[str, Any], seed: int,
             keep_predictions: bool = False) -> dict[str, Any]:
    """Fit ``method`` on one fold and score its test part -> per-fold record.

    ``keep_predictions`` adds the test part's raw outputs under ``"predictions"`` (bag ids, labels, the
    positive class's bag probabilities, the teacher's where it has its own, and per tile the bag index,
    label, probability and raw score), so that a caller can pool folds and bootstrap by slide."""
    from histokd.methods.base import METHODS, SingletonTeacher, TeacherBagScorer

    mcls = METHODS.get(method)
    tr = ds.subset(fold.train)
    mean, std = tr.feature_stats()
    norm = lambda f: (f - mean) / np.maximum(std, 1e-6)  # noqa: E731  (training-fold statistics only)
    tr = tr.map_features(norm)
    va = ds.subset(fold.val).map_features(norm) if len(fold.val) else None
    te = ds.subset(fold.test).map_features(norm)
    data = dict(overrides)
    if "standardize" in mcls.config_cls.model_fields:
        data = deep_merge({"standardize": False}, data)  # already standardised above
    cfg = validate_config(mcls.config_cls, data, source=f"bench config of {method!r}")
    t0 = time.perf_counter()
    labeler = mcls(seed=seed).fit(tr, va, cfg)
    fit_s = time.perf_counter() - t0
    preds = [labeler.predict(te[i].features.numpy()) for i in range(len(te))]
    rec: dict[str, Any] = {"repeat": fold.repeat, "fold": fold.fold, "fit_seconds": fit_s, "n_test": len(te)}
    rec.update(bag_metrics(te.labels, np.stack([p.bag_probs for p in preds]), te.positive_index))
    if isinstance(labeler, TeacherBagScorer):  # distilled students: also score their teacher's own bag output
        t_probs = np.stack([labeler.teacher_bag_probs(te[i].features.numpy()) for i in range(len(te))])
        rec["bag_teacher"] = bag_metrics(te.labels, t_probs, te.positive_index)
    labs = [te[i].instance_labels for i in range(len(te))]
    if all(lab is not None for lab in labs) and labs:
        y = np.concatenate(labs)
        pos = te.positive_index
        rec["instance_from_probs"] = instance_metrics(y, np.concatenate([p.instance_probs[:, pos] for p in preds]))
        if all(p.instance_scores is not None for p in preds):
            rec["instance_from_scores"] = instance_metrics(y, np.concatenate([p.instance_scores for p in preds]))
        if isinstance(labeler, SingletonTeacher):  # Distill-to-Label: the teacher on bags of one
            single = [labeler.teacher_singleton_probs(te[i].features.numpy())[:, pos] for i in range(len(te))]
            rec["instance_from_teacher_singleton"] = instance_metrics(y, np.concatenate(single))
    if keep_predictions:
        rec["predictions"] = _raw_predictions(ds, fold, te, preds, labs,
                                              t_probs if "bag_teacher" in rec else None)
        rec["predictions"]["decision"] = _decision_of(labeler)
    return rec


def _decision_of(labeler: Labeler) -> dict[str, Any] | None:
    """The slide cut the labeller chose at fit (:mod:`histokd.methods.decision`), if it has one."""
    d = labeler.decision
    if d is None:
        d = (labeler.meta or {}).get("decision")
    return dict(d) if isinstance(d, dict) else None


def _raw_predictions(ds: BagDataset, fold: Fold, te: BagDataset, preds: list[Any], labs: list[Any], t_probs: np.ndarray | None) -> dict[str, Any]:
    """The test part's outputs as plain lists (JSON), rounded to 6 decimals."""
    pos = te.positive_index

    def r(a: Any) -> list[float]:
        return [round(float(v), 6) for v in np.asarray(a, dtype=np.float64).ravel()]

    out: dict[str, Any] = {
        "bag_ids": [ds.slide_ids[i] for i in fold.test],
        "labels": [int(v == pos) for v in te.labels],
        "bag_probs": r([p.bag_probs[pos] for p in preds]),
    }
    if t_probs is not None:
        out["teacher_bag_probs"] = r(t_probs[:, pos])
    if labs and all(lab is not None for lab in labs):
        out["tile_bag"] = [k for k, lab in enumerate(labs) for _ in range(len(lab))]
        out["tile_labels"] = [int(v) for lab in labs for v in np.asarray(lab)]
        out["tile_probs"] = r(np.concatenate([p.instance_probs[:, pos] for p in preds]))
        if all(p.instance_scores is not None for p in preds):
            out["tile_scores"] = r(np.concatenate([p.instance_scores for p in preds]))
    return out


def _ensure_instance_labels(spec: str) -> None:
    """``workspace:RUN:ENC``: the tile truth from the cohort's masks (contract 6) is written here when no stage
    wrote it yet, so bench's instance metrics exist on a fresh workspace; files already written (by ``label``,
    at its ``--tumour-threshold``) are kept, and missing ones are made at the same threshold."""
    kind, _, rest = spec.partition(":")
    run, sep, enc = rest.rpartition(":")
    if kind != "workspace" or not sep or not run or not enc:
        return  # not a workspace, or a malformed spec that load_benchmark reports
    import h5py

    from histokd.data.bags import DEFAULT_TUMOUR_THRESHOLD, ensure_instance_labels
    from histokd.workspace import Workspace

    ws = Workspace(run)
    if not ws.features_dir(enc).is_dir():
        return  # load_benchmark says what is missing
    threshold = DEFAULT_TUMOUR_THRESHOLD
    for path in sorted(ws.instance_labels_h5(enc, "x").parent.glob("*.h5")):
        try:
            with h5py.File(path, "r") as f:
                threshold = float(f.attrs.get("threshold", threshold))
            break
        except OSError:
            continue
    for sid, why in ensure_instance_labels(ws, enc, threshold=threshold).items():
        log.warning("bench: no instance labels for %s: %s", sid, why)


def check_classes(ds: BagDataset, labels: np.ndarray, where: str, part: str) -> None:
    """Refuse, with one line, a dataset (or a fold's training part) whose bags are all of one class: a method
    fit on it predicts that class everywhere and scores accuracy 1.000 on a test part of the same class."""
    present = sorted(set(np.asarray(labels).tolist()))
    if len(present) < 2:
        names = [ds.classes[i] for i in present]
        raise InputError(f"{where}: {part} has {len(labels)} bag(s), all of class {names[0] if names else '(none)'!r}; "
                         f"bench needs bags of at least two classes (as train does): add bags of another class or fix "
                         f"the labels" + (", or use fewer folds / another split" if part != "the dataset" else ""))


def bench(
    dataset: str | BagDataset,
    methods: list[str] | str,
    protocol: str = "cv:10x5",
    seed: int = 0,
    overrides: dict[str, Any] | list[str] | None = None,
    method_overrides: dict[str, dict[str, Any]] | None = None,
    val_fraction: float = 0.0,
    json_out: str | Path | None = None,
    engine: str = "local",
    address: str | None = None,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Run ``methods`` on ``dataset`` under ``protocol``; returns (and writes to ``json_out``) the results.

    ``overrides`` apply to every method's config (``["train.max_epochs=40"]`` or a nested dict);
    ``method_overrides[name]`` to one method only. ``engine="ray"`` trains the folds as tasks on a Ray
    cluster (``address``; a local one when None): every fold is the same function of its data, config
    and seed as in the local loop, so the records are the same. ``keep_predictions`` keeps every fold's
    raw test outputs in its record (see :func:`run_fold`), e.g. for slide-level bootstrap CIs.
    """
    if engine not in ("local", "ray"):
        raise InputError(f"--engine {engine!r}: choose local or ray")
    import histokd.methods  # noqa: F401  (registers methods)
    from histokd.data.benchmarks import load_benchmark
    from histokd.methods.base import METHODS

    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    for n in names:
        METHODS.get(n)  # unknown names fail before any training
    if isinstance(dataset, str):
        _ensure_instance_labels(dataset)
    ds = load_benchmark(dataset) if isinstance(dataset, str) else dataset
    kind, k, r = parse_protocol(protocol)
    where = dataset_source(dataset) if isinstance(dataset, str) else "<in-memory dataset>"
    check_classes(ds, ds.labels, where, "the dataset")  # one class: accuracy 1.000 that means nothing
    if kind == "cv":
        folds = list(cv_folds(ds.labels, k, r, seed, val_fraction, groups=None))
    else:
        folds = [split_fold(ds.splits)]
    for f in folds:  # every training part, before any training
        part = "the train split" if kind == "split" else f"the training part of {protocol} repeat {f.repeat} fold {f.fold}"
        check_classes(ds, ds.labels[f.train], where, part)
    common = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    results: dict[str, Any] = {"dataset": dataset if isinstance(dataset, str) else "<in-memory>",
                               "protocol": protocol, "seed": seed, "n_bags": len(ds), "classes": ds.classes,
                               "val_fraction": val_fraction, "overrides": common, "methods": {}}
    jobs = [(name, f, deep_merge(common, (method_overrides or {}).get(name, {})), seed + 1000 * f.repeat + f.fold)
            for name in names for f in folds]
    with progress() as bar:
        task = bar.add_task("bench", total=len(jobs), unit="fold")
        if engine == "ray":
            recs = _run_folds_ray(ds, jobs, address, lambda: bar.advance(task), keep_predictions)
        else:
            recs = []
            for job in jobs:
                recs.append(run_fold(job[0], ds, *job[1:], keep_predictions=keep_predictions))
                bar.advance(task)
    for name in names:
        mine = [rec for job, rec in zip(jobs, recs) if job[0] == name]
        ov = next(job[2] for job in jobs if job[0] == name)
        results["methods"][name] = {**summarise(mine), "folds": mine, "config": ov}
        log.info("%s: %s", name, format_row(name, results["methods"][name]))
    if json_out is not None:
        write_json(json_out, results)
    return results


def _run_folds_ray(ds: BagDataset, jobs: list[tuple], address: str | None, advance: Any,
                   keep_predictions: bool = False) -> list[dict[str, Any]]:
    """The folds of ``jobs`` as Ray tasks (one CPU each; the dataset is shared through the object store);
    records come back in ``jobs`` order."""
    try:
        import ray
    except ImportError as e:
        raise InputError(f"--engine ray: ray is not installed ({e}); pip install 'histokd[ray]'") from e
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    import torch

    remote = ray.remote(num_cpus=1)(_ray_fold)
    ds_ref = ray.put(ds)
    threads = torch.get_num_threads()  # the driver's: the same float reductions, so the same numbers
    refs = [remote.remote(job[0], ds_ref, *job[1:], threads, keep_predictions) for job in jobs]
    pending = list(refs)
    while pending:  # progress as folds finish, in any order
        done, pending = ray.wait(pending, num_returns=1)
        for _ in done:
            advance()
    return ray.get(refs)


def _ray_fold(method: str, ds: BagDataset, fold: Fold, overrides: dict[str, Any], seed: int,
              threads: int, keep_predictions: bool = False) -> dict[str, Any]:
    import torch

    import histokd.methods  # noqa: F401  (registers methods in the worker process)

    torch.set_num_threads(threads)  # Ray gives a task one thread; the local run predicts with the driver's
    return run_fold(method, ds, fold, overrides, seed, keep_predictions)
