"""Issue 16, CSV outputs: quoted by the csv module, spreadsheet-safe, and read back unchanged."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from badinput import TILE_ARGS, cli, cohort_rows, write_cohort

from histokd.workspace import read_csv, restore_cell, spreadsheet_safe, write_csv, write_frame_csv

NORMAL = '=2+3 "normal", A'
TUMOUR = "tumour, grade 2"


def _cells(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _assert_no_live_formula(path: Path) -> None:
    for row in _cells(path):
        for cell in row:
            if cell[:1] in ("=", "+", "-", "@"):
                float(cell)  # only numbers may start with a sign


@pytest.mark.parametrize("value", ["=2+3", "+x", "-", "-inf", "@SUM(A1)", "'=x", "''@y", "'abc", "a, b", 'say "hi"',
                                   "\tx", "plain", ""])
def test_spreadsheet_safe_round_trips(value: str):
    safe = spreadsheet_safe(value)
    assert restore_cell(safe) == value
    if value.lstrip("'")[:1] in ("=", "+", "-", "@", "\t"):
        assert safe.startswith("'")


@pytest.mark.parametrize("number", ["-0.5", "+1", "-1e-05", "3", ".5"])
def test_numbers_stay_numbers(number: str):
    assert spreadsheet_safe(number) == number
    assert spreadsheet_safe(-0.5) == -0.5


def test_write_csv_and_frame_round_trip(tmp_path: Path):
    rows = [["=1+1", -0.25, "a, b"], ['q"uote', 1.5, "@x"]]
    p = write_csv(tmp_path / "a.csv", ["name", "value", "=col"], rows, float_format="%.3f")
    cells = _cells(p)
    assert cells[0] == ["name", "value", "'=col"]
    assert cells[1] == ["'=1+1", "-0.250", "a, b"] and cells[2] == ['q"uote', "1.500", "'@x"]
    back = read_csv(p)
    assert list(back.columns) == ["name", "value", "=col"]
    assert back["name"].tolist() == ["=1+1", 'q"uote'] and back["=col"].tolist() == ["a, b", "@x"]

    df = pd.DataFrame({"slide_id": ["s1", "s2"], "label": ["-x", "tumour, grade 2"], "score": [-0.5, 2.0]})
    p = write_frame_csv(tmp_path / "b.csv", df, float_format="%.6g")
    assert _cells(p)[1] == ["s1", "'-x", "-0.5"]
    _assert_no_live_formula(p)
    back = read_csv(p, dtype={"label": str})
    assert back["label"].tolist() == ["-x", "tumour, grade 2"] and back["score"].tolist() == [-0.5, 2.0]


def test_labels_with_commas_quotes_and_formulas_reach_the_report(tmp_path: Path, slide_files):
    """A label ``tumour, grade 2`` used to shift the columns of bags.csv / splits.csv (bag metrics silently
    gone) and ``=2+3`` was written as a live formula."""
    cohort = write_cohort(tmp_path / "cohort.csv", cohort_rows(slide_files, NORMAL, TUMOUR),
                          tissue_png=slide_files.tissue_png)
    ws = tmp_path / "run"
    assert cli("tile", cohort, "-w", ws, *TILE_ARGS).exit_code == 0
    assert cli("embed", "-w", ws, "-e", "handcrafted", "-j", "0").exit_code == 0
    r = cli("train", "-w", ws, "--method", "abmil", "--max-epochs", "3", "--model-id", "m")
    assert r.exit_code == 0, r.output
    r = cli("label", "-w", ws, "--model", "m", "--bootstrap", "20")
    assert r.exit_code == 0, r.output
    r = cli("report", "-w", ws, "-m", "m", "--bootstrap", "20", "--top-k", "1", "--thumbnail-size", "64")
    assert r.exit_code == 0, r.output

    written = [ws / "cohort.csv", ws / "models/m/splits.csv", ws / "predictions/m/bags.csv", ws / "reports/m/tiles.csv"]
    for p in written:
        cells = _cells(p)
        assert len({len(row) for row in cells}) == 1, f"{p}: ragged rows {cells[:3]}"
        _assert_no_live_formula(p)
    assert {"'" + NORMAL} <= {row[2] for row in _cells(ws / "predictions/m/bags.csv")}

    bags = read_csv(ws / "predictions/m/bags.csv")
    assert set(bags["label"]) == {NORMAL, TUMOUR}
    assert set(read_csv(ws / "models/m/splits.csv")["label"]) == {NORMAL, TUMOUR}
    assert set(read_csv(ws / "cohort.csv")["label"]) == {NORMAL, TUMOUR}
    metrics = json.loads((ws / "predictions/m/metrics.json").read_text())
    assert "auc" in metrics["splits"]["all"]
    html = (ws / "reports/m/index.html").read_text()
    assert "Slides (bag level, from bags.csv)" in html
    assert f"n = 2 (1 {TUMOUR})" in html  # the test split: both slides read, one positive
