"""Inner-validation tuning of a MIL recipe on a classic MIL CSV (musk1 / musk2): the outer test folds are
never used. For each of the 10 outer folds of the first ``--repeats`` repeats of ``cv:10x5`` (seed 0), a
stratified quarter of the outer *training* part is held out as validation; each candidate recipe trains on
the other three quarters and is scored on that quarter. Prints one JSON line per candidate (mean
inner-validation accuracy and AUC over the 10 x repeats inner folds; more repeats, less noise).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_abmil_musk.py --dataset musk1 --candidates FILE.json [--repeats 5]

``FILE.json`` maps a candidate name to config overrides, e.g.
``{"wd5e-3": {"model": {"hidden": [256, 128, 64]}, "train": {"weight_decay": 0.005}}}``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.model_selection import StratifiedKFold

import histokd.methods  # noqa: F401  (registers methods)
from histokd.data.benchmarks import load_benchmark
from histokd.pipeline.bench import run_group
from histokd.evaluate.protocols import Fold, cv_folds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="musk1")
    ap.add_argument("--method", default="abmil")
    ap.add_argument("--candidates", required=True, help="JSON file: name -> config overrides")
    ap.add_argument("--repeats", type=int, default=1, help="outer CV repeats to draw inner folds from")
    args = ap.parse_args()
    with open(args.candidates, encoding="utf-8") as fh:
        cands = json.load(fh)
    ds = load_benchmark(f"mil-csv:{args.dataset}")
    inner = []
    for f in cv_folds(ds.labels, 10, args.repeats, 0):
        y = ds.labels[f.train]
        rs = 123 + f.fold + 1000 * f.repeat  # repeat 0 keeps the seeds of the first (1-repeat) tuning run
        itr, iva = next(StratifiedKFold(4, shuffle=True, random_state=rs).split(np.zeros(len(y)), y))
        inner.append(Fold(f.repeat, f.fold, f.train[itr], np.array([], dtype=np.int64), f.train[iva]))
    for name, ov in cands.items():
        t0 = time.perf_counter()
        # every inner fold side by side (one stacked model where the method can), as bench trains folds
        recs = run_group(args.method, ds, inner, ov, [f.fold + 1000 * f.repeat for f in inner])
        print(json.dumps({"name": name, "inner_val_acc": float(np.mean([r["accuracy"] for r in recs])),
                          "inner_val_auc": float(np.nanmean([r["auc"] for r in recs])),
                          "inner_val_acc_std": float(np.std([r["accuracy"] for r in recs])), "n_folds": len(recs),
                          "seconds": time.perf_counter() - t0, "overrides": ov}), flush=True)


if __name__ == "__main__":
    main()
