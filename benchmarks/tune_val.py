"""Choose a recipe on a cohort's validation split without touching its test split.

Each candidate trains on the ``train`` split, picks its checkpoint on ``val`` (as ``histokd bench
--protocol split`` does) and is *scored on val* too; the test split is never loaded into a fold. Prints
one JSON line per candidate: validation bag AUC (the method's bag output, and the teacher's for distilled
students), instance AUC from scores (attention) and from probabilities (student) when instance labels exist.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_val.py --dataset workspace:RUN:ENC --method abmil \
        --candidates FILE.json [--seeds 0,1]

``FILE.json`` maps a candidate name to config overrides, e.g. ``{"lr1e-3": {"train": {"lr": 0.001}}}``.
Scores on the split that also chose the checkpoint are optimistic; compare candidates with them, and
report test figures only for the recipe chosen here.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import histokd.methods  # noqa: F401  (registers methods)
from histokd.data.benchmarks import load_benchmark
from histokd.pipeline.bench import run_fold
from histokd.evaluate.protocols import Fold, split_fold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="workspace:RUN:ENC (with a train/val/test split column)")
    ap.add_argument("--method", default="abmil")
    ap.add_argument("--candidates", required=True, help="JSON file: name -> config overrides")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds, averaged")
    args = ap.parse_args()
    with open(args.candidates, encoding="utf-8") as fh:
        cands = json.load(fh)
    ds = load_benchmark(args.dataset)
    f = split_fold(ds.splits)
    if not len(f.val):
        raise SystemExit(f"{args.dataset}: no 'val' split to tune on")
    on_val = Fold(0, 0, f.train, f.val, f.val)  # the test part is never used
    seeds = [int(s) for s in args.seeds.split(",")]
    for name, ov in cands.items():
        t0 = time.perf_counter()
        recs = [run_fold(args.method, ds, on_val, ov, s) for s in seeds]
        out = {"name": name, "val_bag_auc": float(np.mean([r["auc"] for r in recs]))}
        if all("bag_teacher" in r for r in recs):
            out["val_teacher_bag_auc"] = float(np.mean([r["bag_teacher"]["auc"] for r in recs]))
        for src in ("instance_from_scores", "instance_from_probs"):
            if all(src in r for r in recs):
                out[f"val_{src}_auc"] = float(np.mean([r[src]["auc"] for r in recs]))
        out.update(seeds=seeds, seconds=time.perf_counter() - t0, overrides=ov)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
