"""``histokd bench`` refuses bad datasets before any training (issue 16): a ``mil-csv:`` file with NaN, inf, text,
empty cells or ragged rows used to fail only after training (or train on NaN); a dataset, or a fold's training
part, of one class used to report accuracy 1.000 where ``train`` refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from badinput import TILE_ARGS, cli, cohort_rows, write_cohort

import histokd.pipeline.bench as bench_mod


@pytest.fixture
def no_training(monkeypatch):
    """Any fold that starts training fails the test: the refusals must come first."""
    def refuse(*a, **k):
        raise AssertionError("bench started training")

    monkeypatch.setattr(bench_mod, "run_fold", refuse)


def _lines(n_bags: int = 8, labels=(0, 1)) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for b in range(n_bags):
        lab = labels[b % len(labels)]
        for _ in range(3):
            out.append(",".join([str(lab), str(b + 1), *(f"{x:.3f}" for x in rng.normal(lab, 1, 4))]))
    return out


def _csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _bench(spec: str, *extra: str):
    return cli("bench", "-d", spec, "--method", "abmil", "-p", "cv:2", "--set", "train.max_epochs=1", *extra)


def _last_line(r) -> str:
    return r.output.strip().splitlines()[-1]


FEATURE_FIX = "features must be finite numbers (no NaN, inf, text or empty cells): fix or remove line 5"


@pytest.mark.parametrize("row, expected", [
    ("1,2,0.1,nan,0.3,0.4", "line 5, column 4 (feature 2): 'nan' is not a finite number; " + FEATURE_FIX),
    ("1,2,0.1,0.2,-inf,0.4", "line 5, column 5 (feature 3): '-inf' is not a finite number; " + FEATURE_FIX),
    ("1,2,0.1,0.2,0.3,1e999", "line 5, column 6 (feature 4): '1e999' is not a finite number; " + FEATURE_FIX),
    ("1,2,0.1,high,0.3,0.4", "line 5, column 4 (feature 2): 'high' is not a finite number; " + FEATURE_FIX),
    ("1,2,0.1,,0.3,0.4", "line 5, column 4 (feature 2): empty; " + FEATURE_FIX),
    ("1,2,0.1,0.2,0.3,0.4,0.5", "line 5 has 7 columns but line 1 has 6 (ragged rows); fix or remove line 5"),
    ("1,2,0.1,0.2,0.3", "line 5 has 5 columns but line 1 has 6 (ragged rows); fix or remove line 5"),
    ("2,2,0.1,0.2,0.3,0.4", "line 5, column 1 (bag label): '2' is not 0 or 1; every row is: bag label (0 or 1)"),
    ("1,,0.1,0.2,0.3,0.4", "line 5, column 2 (bag id): empty;"),
])
def test_bad_mil_csv_cells_refused_before_training(tmp_path, no_training, row, expected):
    lines = _lines()
    lines[4] = row
    path = _csv(tmp_path / "bags.csv", lines)
    r = _bench(f"mil-csv:{path}")
    assert r.exit_code == 2, r.output
    assert _last_line(r) == _last_line(r).strip() and f"error: {path}: {expected}" in _last_line(r), r.output


def test_mil_csv_header_row_and_empty_file(tmp_path, no_training):
    path = _csv(tmp_path / "header.csv", ["label,bag,f1,f2,f3,f4", *_lines()])
    r = _bench(f"mil-csv:{path}")
    assert r.exit_code == 2
    assert f"{path}: line 1, column 1 (bag label): 'label' is not 0 or 1 (a header row? the format has none: remove it)" \
        in _last_line(r)
    empty = _csv(tmp_path / "empty.csv", [])
    r = _bench(f"mil-csv:{empty}")
    assert r.exit_code == 2 and f"{empty}: no rows; every row is: bag label (0 or 1), bag id" in _last_line(r)


def test_mil_csv_of_one_class_refused(tmp_path, no_training):
    path = _csv(tmp_path / "ones.csv", _lines(labels=(1,)))
    r = _bench(f"mil-csv:{path}")
    assert r.exit_code == 2
    assert (f"{path}: the dataset has 8 bag(s), all of class '1'; bench needs bags of at least two classes (as train "
            f"does): add bags of another class or fix the labels") in _last_line(r)


def test_good_mil_csv_still_loads_as_before(tmp_path):
    from histokd.data.benchmarks import load_benchmark

    lines = _lines()
    path = _csv(tmp_path / "good.csv", ["", *lines[:3], "", *lines[3:]])  # blank lines are not rows
    ds = load_benchmark(f"mil-csv:{path}")
    assert len(ds) == 8 and ds.dim == 4 and ds.classes == ["0", "1"]
    assert ds.slide_ids[:2] == ["good_1", "good_2"] and ds.labels.tolist() == [0, 1] * 4
    np.testing.assert_allclose(ds[0].features.numpy()[0], [float(x) for x in lines[0].split(",")[2:]], rtol=1e-6)


def _workspace(tmp_path, slide_files, rows):
    co = write_cohort(tmp_path / "a.csv", rows, tissue_png=slide_files.tissue_png)
    run = tmp_path / "run"
    assert cli("tile", co, "-w", run, *TILE_ARGS).exit_code == 0
    assert cli("embed", "-w", run, "-e", "handcrafted", "-j", "0").exit_code == 0
    return run


def test_workspace_of_one_class_refused_like_train(tmp_path, slide_files, no_training):
    run = _workspace(tmp_path, slide_files, [r for r in cohort_rows(slide_files) if r[2] == "tumour"])
    r = cli("train", "-w", run, "--method", "abmil", "--model-id", "m", "--max-epochs", "1")
    assert r.exit_code == 2 and "needs at least two classes" in r.output
    r = _bench(f"workspace:{run}:handcrafted")
    assert r.exit_code == 2, r.output
    assert (f"{run / 'cohort.csv'}: the dataset has 4 bag(s), all of class 'tumour'; bench needs bags of at least two "
            f"classes (as train does)") in _last_line(r)


def test_workspace_train_split_of_one_class_refused(tmp_path, slide_files, no_training):
    rows = cohort_rows(slide_files)
    for r in rows:  # every normal slide is val or test: the train split holds tumours only
        if r[2] == "normal" and r[3] == "train":
            r[3] = "test"
    run = _workspace(tmp_path, slide_files, rows)
    r = cli("bench", "-d", f"workspace:{run}:handcrafted", "--method", "abmil", "-p", "split")
    assert r.exit_code == 2, r.output
    assert (f"{run / 'cohort.csv'}: the train split has 2 bag(s), all of class 'tumour'; bench needs bags of at least "
            f"two classes (as train does): add bags of another class or fix the labels, or use fewer folds / another "
            f"split") in _last_line(r)
