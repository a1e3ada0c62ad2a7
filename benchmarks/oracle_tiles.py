"""Supervised ceiling for a workspace's tile features: a logistic regression trained on the *true* tile
labels of the training split (contract-6 instance labels), scored by tile AUC on the test split. It says
whether an encoder can separate tumour tiles at all, before any MIL method is blamed.

    .venv/bin/python benchmarks/oracle_tiles.py RUN ENC
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import h5py
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler


def main(run: str, enc: str) -> None:
    with open(Path(run) / "cohort.csv", encoding="utf-8") as fh:
        rows = {r["slide_id"]: r for r in csv.DictReader(fh)}
    xs: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    ys: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for f in sorted((Path(run) / "features" / enc / "instance_labels").glob("*.h5")):
        split = rows.get(f.stem, {}).get("split")
        if split not in xs:
            continue
        with h5py.File(f, "r") as h:
            lab = h["label"][:]
        with h5py.File(Path(run) / "features" / enc / f.name, "r") as h:
            x = h["features"][:]
        keep = lab >= 0
        xs[split].append(x[keep])
        ys[split].append(lab[keep])
    xtr, ytr = np.concatenate(xs["train"]), np.concatenate(ys["train"])
    xte, yte = np.concatenate(xs["test"]), np.concatenate(ys["test"])
    sc = StandardScaler().fit(xtr)
    clf = LogisticRegression(max_iter=2000, C=0.1, class_weight="balanced").fit(sc.transform(xtr), ytr)
    auc = roc_auc_score(yte, clf.decision_function(sc.transform(xte)))
    print(f"oracle tile AUC (test split) {auc:.3f}  tumour tiles {int(yte.sum())} of {len(yte)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
