"""A whole run writes only inside its workspace (and histokd's documented cache folder), whatever the
current directory is: tile -> embed -> train -> label -> report, with a bad slide among good ones."""

from __future__ import annotations

import os
from pathlib import Path

from badinput import TILE_ARGS, cli, cohort_rows, write_cohort


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_a_run_writes_only_inside_its_workspace(tmp_path, slide_files, monkeypatch):
    inputs, cwd, run, cache = tmp_path / "inputs", tmp_path / "cwd", tmp_path / "run", tmp_path / "cache"
    for d in (inputs, cwd):
        d.mkdir()
    rows = cohort_rows(slide_files) + [["broken", str(inputs / "missing.tif"), "tumour", "train"]]
    co = write_cohort(inputs / "cohort.csv", rows, tissue_png=slide_files.tissue_png)
    before = _tree(inputs)
    slides_before = _tree(slide_files.tissue_png.parent)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HISTOKD_CACHE_DIR", str(cache))
    # the broken slide fails alone at every stage (exit 1, its line), the others go through
    r = cli("tile", co, "-w", run, *TILE_ARGS)
    assert r.exit_code == 1 and "missing.tif" in r.output
    r = cli("embed", "-w", run, "-e", "efficientnet_lite0", "-j", "0")
    assert r.exit_code == 1 and "1 of 9 slides failed" in r.output
    assert cli("train", "-w", run, "--method", "abmil", "--max-epochs", "1", "--model-id", "m").exit_code == 0
    r = cli("label", "-w", run, "-m", "m", "--bootstrap", "10")
    assert r.exit_code == 1 and "1 of 9 slides failed" in r.output and "broken" in r.output
    assert cli("report", "-w", run, "-m", "m", "--bootstrap", "10", "--top-k", "1",
               "--thumbnail-size", "64").exit_code == 0
    assert sorted(os.listdir(tmp_path)) == ["cache", "cwd", "inputs", "run"]
    assert _tree(cwd) == set() and _tree(inputs) == before and _tree(slide_files.tissue_png.parent) == slides_before
    assert {p.parts[0] for p in map(Path, _tree(cache))} == {"onnx", "openvino", "runtime-choice.json"}  # graphs, compiled graphs,
    # and which graph runtime is faster on this machine
    assert (run / "reports" / "m" / "index.html").exists()
    assert not [p for p in run.rglob("*.tmp")]  # nothing half-written
