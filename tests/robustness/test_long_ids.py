"""Issue 16, a slide id of 300 characters used to abort with ``File name too long``: it is refused at cohort
load with one line naming the slide and the fix, and the other slides go on."""

from __future__ import annotations

from pathlib import Path

import pytest
from badinput import TILE_ARGS, cli, write_cohort

from histokd.errors import InputError
from histokd.workspace import MAX_ID_LENGTH, check_id

LONG = "TCGA-" + "x" * 295  # 300 characters, otherwise a valid id


def test_overlong_slide_id_is_refused_and_the_others_are_processed(tmp_path: Path, slide_files):
    rows = [[LONG, str(slide_files.normal[0]), "normal", "train"],
            ["n1", str(slide_files.normal[1]), "normal", "train"],
            ["t1", str(slide_files.tumour[1]), "tumour", "train"]]
    cohort = write_cohort(tmp_path / "cohort.csv", rows, tissue_png=slide_files.tissue_png)
    ws = tmp_path / "run"
    r = cli("tile", cohort, "-w", ws, *TILE_ARGS)
    assert r.exit_code == 1, r.output
    assert "tiled 2 slide(s)" in r.output and "1 of 3 slides failed" in r.output
    failure = [ln for ln in r.output.splitlines() if "characters long" in ln]
    assert len(failure) == 1, r.output
    assert f"{cohort}: line 2: slide_id 'TCGA-xxx" in failure[0]
    assert "is 300 characters long, too long for a file name (at most 200); rename it in the cohort CSV" in failure[0]
    assert LONG not in r.output  # the failure list shows the start of the id, not 300 characters
    assert sorted(p.name for p in (ws / "tiles").glob("*.h5")) == ["n1.h5", "t1.h5"]
    r = cli("embed", "-w", ws, "-e", "handcrafted", "-j", "0")
    assert r.exit_code == 0 and "2 written" in r.output and "0 failed" in r.output, r.output


def test_id_length_limit():
    assert check_id("a" * MAX_ID_LENGTH) == "a" * MAX_ID_LENGTH
    with pytest.raises(InputError, match="201 characters long.*rename it in the cohort CSV"):
        check_id("a" * (MAX_ID_LENGTH + 1))


def test_overlong_model_id_is_one_line(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("histokd.pipeline.train.pick_features", lambda ws, features: "handcrafted")
    r = cli("train", "-w", tmp_path, "--model-id", "m" * 250)
    assert r.exit_code == 2, r.output
    assert "model id 'mmm" in r.output and "250 characters long" in r.output and "choose another model id" in r.output
    assert "cohort CSV" not in r.output
