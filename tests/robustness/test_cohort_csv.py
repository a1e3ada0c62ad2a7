"""Issue 16, cohort CSV shapes: a trailing comma on every row used to end in a traceback (``TypeError`` when
only the rows had it: pandas took slide_id as the index) or carry an ``Unnamed`` column."""

from __future__ import annotations

from pathlib import Path

import pytest
from badinput import TILE_ARGS, cli

from histokd.data.cohort import read_cohort
from histokd.errors import InputError


def _rows(slide_files) -> list[str]:
    png = slide_files.tissue_png
    return [f"n0,{slide_files.normal[0]},normal,train,{png}", f"t0,{slide_files.tumour[0]},tumour,train,{png}"]


@pytest.mark.parametrize("header_comma", [True, False], ids=["header-and-rows", "rows-only"])
def test_trailing_comma_on_every_row_tiles(tmp_path: Path, slide_files, header_comma: bool):
    header = "slide_id,path,label,split,tissue_mask_path" + ("," if header_comma else "")
    cohort = tmp_path / "cohort.csv"
    cohort.write_text("\n".join([header, *(r + "," for r in _rows(slide_files))]) + "\n")
    ws = tmp_path / "run"
    r = cli("tile", cohort, "-w", ws, *TILE_ARGS)
    assert r.exit_code == 0, r.output
    assert "0 failed" in r.output
    co = read_cohort(ws / "cohort.csv")
    assert list(co.df.columns) == ["slide_id", "path", "label", "split", "tissue_mask_path"]
    assert co.slide_ids == ["n0", "t0"] and co.classes == ["normal", "tumour"]
    assert (ws / "tiles" / "n0.h5").exists() and (ws / "tiles" / "t0.h5").exists()


def test_unquoted_comma_in_a_label_is_refused_not_cut(tmp_path: Path, slide_files):
    """A row longer than its header with values in the extra cells is an unquoted comma: say so."""
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(f"slide_id,path,label\nn0,{slide_files.normal[0]},normal\nt0,{slide_files.tumour[0]},tumour, grade 2\n")
    r = cli("tile", cohort, "-w", tmp_path / "run", *TILE_ARGS)
    assert r.exit_code == 2, r.output
    assert f"{cohort}: line 3 has 4 cells but the header has 3" in r.output
    assert '"tumour, grade 2"' in r.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("slide_id,path,label\r\na,a.tif,0\r\n\r\nb,b.tif,1\r\n", {"a": "0", "b": "1"}),  # CRLF, a blank line
        ("\ufeffslide_id, path, label\na, a.tif, 0\n", {"a": "0"}),  # Excel's BOM, spaces after commas
        ("slide_id,path,label,,\na,a.tif,0,,\n", {"a": "0"}),  # several empty trailing columns
        ("slide_id,path,label\na,a.tif\n", None),  # short row: empty label -> invalid row
    ],
)
def test_cohort_shapes(tmp_path: Path, text: str, expected):
    p = tmp_path / "c.csv"
    p.write_text(text, encoding="utf-8")
    if expected is None:
        with pytest.raises(InputError, match="empty label"):
            read_cohort(p)
        return
    co = read_cohort(p)
    assert dict(zip(co.slide_ids, co.df["label"])) == expected


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "the file is empty"),
        (b"slide_id,label,label\na,0,1\n", "'label' appear more than once"),
        (b"slide_id,path,label\na,a.tif,\xff\xfe\n", "not UTF-8"),
    ],
)
def test_broken_cohorts_are_one_line(tmp_path: Path, data: bytes, match: str):
    p = tmp_path / "c.csv"
    p.write_bytes(data)
    with pytest.raises(InputError, match=match):
        read_cohort(p)
    r = cli("tile", p, "-w", tmp_path / "run")
    assert r.exit_code == 2 and str(p) in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_messages_name_the_line_an_editor_shows(tmp_path):
    csv = tmp_path / "c.csv"
    # blank lines and a quoted line break before the bad rows: lines are counted as in the file
    csv.write_text('slide_id,path,label\n\n\na,a.tif,"tumour\nx"\nb/c,b.tif,normal\nd,d.tif,normal,extra\n')
    with pytest.raises(InputError, match=r"line 7 has 4 cells but the header has 3"):
        read_cohort(csv)
    csv.write_text('slide_id,path,label\n\n\na,a.tif,tumour\nb/c,b.tif,normal\n')
    co = read_cohort(csv, drop_invalid=True)
    assert "line 5" in co.invalid["b/c"]
