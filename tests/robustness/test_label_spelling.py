"""Issue 16, label spelling: ``tumour`` / ``Tumour`` / ``tumor`` / ``NORMAL `` used to become 4 classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from badinput import TILE_ARGS, cli, write_cohort

import histokd
from histokd.data.cohort import read_cohort
from histokd.errors import InputError


def _misspelt_cohort(tmp_path: Path, slide_files) -> Path:
    labels_n = ["normal", "NORMAL ", "normal", "normal"]
    labels_t = ["tumour", "Tumour", "tumor", "tumour"]
    splits = ["train", "train", "val", "test"]
    rows = [[f"n{i}", str(p), labels_n[i], splits[i]] for i, p in enumerate(slide_files.normal)]
    rows += [[f"t{i}", str(p), labels_t[i], splits[i]] for i, p in enumerate(slide_files.tumour)]
    return write_cohort(tmp_path / "cohort.csv", rows, tissue_png=slide_files.tissue_png)


def test_tile_refuses_one_class_spelt_several_ways(tmp_path: Path, slide_files):
    cohort = _misspelt_cohort(tmp_path, slide_files)
    ws = tmp_path / "run"
    r = cli("tile", cohort, "-w", ws, *TILE_ARGS)
    assert r.exit_code == 2, r.output
    line = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(line) == 1, r.output
    msg = line[0]
    assert str(cohort) in msg
    for lab in ("'normal' (3)", "'NORMAL' (1)", "'tumour' (2)", "'Tumour' (1)", "'tumor' (1)"):
        assert lab in msg
    assert '--label-map "NORMAL=normal,Tumour=tumour,tumor=tumour"' in msg
    assert not (ws / "cohort.csv").exists() and not (ws / "tiles").exists()


def test_label_map_fixes_it_and_the_model_has_two_classes(tmp_path: Path, slide_files):
    cohort = _misspelt_cohort(tmp_path, slide_files)
    ws = tmp_path / "run"
    r = cli("tile", cohort, "-w", ws, *TILE_ARGS, "--label-map", "Tumour=tumour, tumor=tumour",
            "--label-map", "NORMAL=normal")
    assert r.exit_code == 0, r.output
    assert read_cohort(ws / "cohort.csv").classes == ["normal", "tumour"]
    assert cli("embed", "-w", ws, "-e", "handcrafted", "-j", "0").exit_code == 0
    r = cli("train", "-w", ws, "--method", "abmil", "--max-epochs", "1", "--model-id", "m")
    assert r.exit_code == 0, r.output
    assert json.loads((ws / "models/m/classes.json").read_text()) == ["normal", "tumour"]


def test_python_api_label_map(tmp_path: Path, slide_files):
    cohort = _misspelt_cohort(tmp_path, slide_files)
    with pytest.raises(InputError, match="--label-map"):
        histokd.tile(cohort, tmp_path / "run", mpp=1.0, size=32, workers=1)
    res = histokd.tile(cohort, tmp_path / "run", mpp=1.0, size=32, workers=1, show_progress=False,
                       label_map={"Tumour": "tumour", "tumor": "tumour", "NORMAL": "normal"})
    assert not res.failures and len(res.tiled) == 8


@pytest.mark.parametrize("spec", ["tumor", "=tumour", "tumor="])
def test_bad_label_map_is_one_line(tmp_path: Path, slide_files, spec: str):
    cohort = _misspelt_cohort(tmp_path, slide_files)
    r = cli("tile", cohort, "-w", tmp_path / "run", *TILE_ARGS, "--label-map", spec)
    assert r.exit_code == 2 and "FROM=TO" in r.output, r.output


def test_distinct_classes_are_not_merged(tmp_path: Path):
    p = tmp_path / "c.csv"
    p.write_text("slide_id,path,label\na,a.tif,normal\nb,b.tif,benign\nc,c.tif,tumour\nd,d.tif,tumour grade 2\n")
    assert read_cohort(p).classes == ["benign", "normal", "tumour", "tumour grade 2"]
    p.write_text("slide_id,path,label\na,a.tif,tumour  grade 2\nb,b.tif,Tumour grade 2\n")
    with pytest.raises(InputError, match="'Tumour grade 2' / 'tumour  grade 2'"):
        read_cohort(p)
