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

__all__ = ["bench", "fold_groups", "format_table", "run_fold", "run_group"]

log = logging.getLogger("histokd")


def run_fold(method: str, ds: BagDataset, fold: Fold, overrides: dict[str, Any], seed: int,
             keep_predictions: bool = False) -> dict[str, Any]:
    """Fit ``method`` on one fold and score its test part -> per-fold record (:func:`run_group` of one fold)."""
    return run_group(method, ds, [fold], overrides, [seed], keep_predictions)[0]


def _fold_parts(ds: BagDataset, fold: Fold) -> tuple[BagDataset, BagDataset | None, BagDataset]:
    """A fold's train / val / test bags, z-scored with the training part's statistics only."""
    tr = ds.subset(fold.train)
    mean, std = tr.feature_stats()
    norm = lambda f: (f - mean) / np.maximum(std, 1e-6)  # noqa: E731  (training-fold statistics only)
    va = ds.subset(fold.val).map_features(norm) if len(fold.val) else None
    return tr.map_features(norm), va, ds.subset(fold.test).map_features(norm)


def _method_config(method: str, overrides: dict[str, Any]) -> Any:
    from histokd.methods.base import METHODS

    mcls = METHODS.get(method)
    data = dict(overrides)
    if "standardize" in mcls.config_cls.model_fields:
        data = deep_merge({"standardize": False}, data)  # already standardised by _fold_parts
    return validate_config(mcls.config_cls, data, source=f"bench config of {method!r}")


def run_group(method: str, ds: BagDataset, folds: list[Fold], overrides: dict[str, Any], seeds: list[int],
              keep_predictions: bool = False) -> list[dict[str, Any]]:
    """Fit ``method`` on several folds at once (side by side where the method can: ``Method.fit_many``) and
    score each test part -> one record per fold; ``fit_seconds`` is the group's fit time shared equally.

    ``keep_predictions`` adds the test part's raw outputs under ``"predictions"`` (bag ids, labels, the
    positive class's bag probabilities, the teacher's where it has its own, and per tile the bag index,
    label, probability and raw score), so that a caller can pool folds and bootstrap by slide."""
    from histokd.methods.base import METHODS

    parts = [_fold_parts(ds, f) for f in folds]
    cfg = _method_config(method, overrides)
    t0 = time.perf_counter()
    labelers = METHODS.get(method).fit_many([(tr, va, s) for (tr, va, _te), s in zip(parts, seeds)], cfg)
    fit_s = (time.perf_counter() - t0) / max(1, len(folds))
    return [_score_fold(lab, ds, f, te, fit_s, len(folds), keep_predictions)
            for lab, f, (_tr, _va, te) in zip(labelers, folds, parts)]


def _score_fold(labeler: Labeler, ds: BagDataset, fold: Fold, te: BagDataset, fit_s: float, group: int,
                keep_predictions: bool) -> dict[str, Any]:
    """One fold's record: bag metrics of the test part, instance metrics where tiles are labelled."""
    from histokd.methods.base import SingletonTeacher, TeacherBagScorer

    preds = [labeler.predict(te[i].features.numpy()) for i in range(len(te))]
    rec: dict[str, Any] = {"repeat": fold.repeat, "fold": fold.fold, "fit_seconds": fit_s, "n_test": len(te),
                           "group_size": group}
    rec.update(bag_metrics(te.labels, np.stack([p.bag_probs for p in preds]), te.positive_index))
    if isinstance(labeler, TeacherBagScorer):  # distilled students: also score their teacher's own bag output
        t_probs = np.stack([labeler.teacher_bag_probs(te[i].features.numpy()) for i in range(len(te))])
        rec["bag_teacher"] = bag_metrics(te.labels, t_probs, te.positive_index)
    labs = [te[i].instance_labels for i in range(len(te))]
    single: list[np.ndarray] | None = None  # the teacher on each test tile alone (distilled students)
    if all(lab is not None for lab in labs) and labs:
        y = np.concatenate(labs)
        pos = te.positive_index
        rec["instance_from_probs"] = instance_metrics(y, np.concatenate([p.instance_probs[:, pos] for p in preds]))
        if all(p.instance_scores is not None for p in preds):
            rec["instance_from_scores"] = instance_metrics(y, np.concatenate([p.instance_scores for p in preds]))
        if isinstance(labeler, SingletonTeacher):  # distilled students: their teacher on bags of one
            single = [labeler.teacher_singleton_probs(te[i].features.numpy())[:, pos] for i in range(len(te))]
            rec["instance_from_teacher_singleton"] = instance_metrics(y, np.concatenate(single))
    if keep_predictions:
        rec["predictions"] = _raw_predictions(ds, fold, te, preds, labs,
                                              t_probs if "bag_teacher" in rec else None, single)
        if "tile_score" in (labeler.meta or {}):  # the tile rule these tile_probs were made with
            rec["predictions"]["tile_score"] = str(labeler.meta["tile_score"])
        rec["predictions"]["decision"] = _decision_of(labeler)
    return rec


#: the data of the folds trained side by side in one group (their z-scored copies) stays under this
GROUP_MEMORY = 4 * 2**30


def fold_groups(method: str, ds: BagDataset, n_folds: int, overrides: dict[str, Any], group: int = 0) -> list[list[int]]:
    """How ``method``'s folds are grouped to train side by side: ``group`` folds per group (1: one at a time),
    or with 0 (auto) every fold in one group where the method trains side by side, as many as fit
    :data:`GROUP_MEMORY` (each fold holds a z-scored copy of the dataset), else one at a time."""
    from histokd.methods.base import METHODS

    if group < 0:
        raise InputError(f"--group {group}: give a number of folds (1: one at a time, 0: automatic)")
    if group == 0:
        side = METHODS.get(method).side_by_side(_method_config(method, overrides), ds.dim, ds.n_classes)
        per_fold = max(1, int(ds.sizes.sum()) * ds.dim * 4)
        group = max(1, min(n_folds, GROUP_MEMORY // per_fold)) if side else 1
    return [list(range(k, min(n_folds, k + group))) for k in range(0, n_folds, group)]


def _decision_of(labeler: Labeler) -> dict[str, Any] | None:
    """The slide cut the labeller chose at fit (:mod:`histokd.methods.decision`), if it has one."""
    d = labeler.decision
    if d is None:
        d = (labeler.meta or {}).get("decision")
    return dict(d) if isinstance(d, dict) else None


def _raw_predictions(ds: BagDataset, fold: Fold, te: BagDataset, preds: list[Any], labs: list[Any],
                     t_probs: np.ndarray | None, single: list[np.ndarray] | None = None) -> dict[str, Any]:
    """The test part's outputs as plain lists (JSON), rounded to 6 decimals; ``single``: the teacher's positive-class
    probability of each tile alone, per bag (``tile_teacher_probs``)."""
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
        if single is not None:
            out["tile_teacher_probs"] = r(np.concatenate(single))
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
    group: int = 0,
) -> dict[str, Any]:
    """Run ``methods`` on ``dataset`` under ``protocol``; returns (and writes to ``json_out``) the results.

    ``overrides`` apply to every method's config (``["train.max_epochs=40"]`` or a nested dict);
    ``method_overrides[name]`` to one method only. ``engine="ray"`` trains the folds as tasks on a Ray
    cluster (``address``; a local one when None): every fold is the same function of its data, config
    and seed as in the local loop, so the records are the same. ``keep_predictions`` keeps every fold's
    raw test outputs in its record (see :func:`run_group`), e.g. for slide-level bootstrap CIs. ``group``:
    folds trained side by side per group (:func:`fold_groups`; 0 = automatic, 1 = one at a time); a Ray task
    trains one group, so a Ray run equals the local run with the same grouping.
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
                               "val_fraction": val_fraction, "overrides": common, "group": group, "methods": {}}
    jobs = []  # (method, folds, overrides, seeds) per group of folds trained side by side
    for name in names:
        ov = deep_merge(common, (method_overrides or {}).get(name, {}))
        for idx in fold_groups(name, ds, len(folds), ov, group):
            jobs.append((name, [folds[i] for i in idx], ov, [seed + 1000 * folds[i].repeat + folds[i].fold for i in idx]))
    with progress() as bar:
        task = bar.add_task("bench", total=len(names) * len(folds), unit="fold")
        if engine == "ray":
            recs = _run_groups_ray(ds, jobs, address, lambda n: bar.advance(task, n), keep_predictions)
        else:
            recs = []
            for job in jobs:
                recs.append(run_group(job[0], ds, *job[1:], keep_predictions=keep_predictions))
                bar.advance(task, len(job[1]))
    for name in names:
        mine = [rec for job, group_recs in zip(jobs, recs) if job[0] == name for rec in group_recs]
        ov = next(job[2] for job in jobs if job[0] == name)
        results["methods"][name] = {**summarise(mine), "folds": mine, "config": ov}
        log.info("%s: %s", name, format_row(name, results["methods"][name]))
    if json_out is not None:
        write_json(json_out, results)
    return results


def _run_groups_ray(ds: BagDataset, jobs: list[tuple], address: str | None, advance: Any,
                    keep_predictions: bool = False) -> list[list[dict[str, Any]]]:
    """The groups of ``jobs`` as Ray tasks (one CPU each; the dataset is shared through the object store);
    records come back in ``jobs`` order."""
    try:
        import ray
    except ImportError as e:
        raise InputError(f"--engine ray: ray is not installed ({e}); pip install 'histokd[ray]'") from e
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    import torch

    remote = ray.remote(num_cpus=1)(_ray_group)
    ds_ref = ray.put(ds)
    threads = torch.get_num_threads()  # the driver's: the same float reductions, so the same numbers
    refs = [remote.remote(job[0], ds_ref, *job[1:], threads, keep_predictions) for job in jobs]
    size = {ref: len(job[1]) for ref, job in zip(refs, jobs)}
    pending = list(refs)
    while pending:  # progress as groups finish, in any order
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            advance(size[ref])
    return ray.get(refs)


def _ray_group(method: str, ds: BagDataset, folds: list[Fold], overrides: dict[str, Any], seeds: list[int],
               threads: int, keep_predictions: bool = False) -> list[dict[str, Any]]:
    import torch

    import histokd.methods  # noqa: F401  (registers methods in the worker process)

    torch.set_num_threads(threads)  # Ray gives a task one thread; the local run predicts with the driver's
    return run_group(method, ds, folds, overrides, seeds, keep_predictions)
