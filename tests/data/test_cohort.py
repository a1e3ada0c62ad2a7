"""Cohort CSV: validation, absolute paths, invalid rows, workspace copy."""

from __future__ import annotations

import pandas as pd
import pytest

from histokd.data.cohort import load_workspace_cohort, read_cohort
from histokd.errors import InputError
from histokd.workspace import Workspace


def _csv(tmp_path, text, name="cohort.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_read_cohort_absolute_paths_and_strings(tmp_path):
    (tmp_path / "sub").mkdir()
    p = _csv(tmp_path / "sub", "slide_id,path,label,split,mask_path,paired_path\n"
             "a,a.tif,1,train,masks/a.png,\nb,/abs/b.tif,0,val,,b_mx.tif\n")
    co = read_cohort(p)
    assert co.slide_ids == ["a", "b"] and len(co) == 2
    assert co.df.loc["a", "path"] == str((tmp_path / "sub" / "a.tif").resolve())
    assert co.df.loc["b", "path"] == "/abs/b.tif"
    assert co.df.loc["a", "mask_path"] == str((tmp_path / "sub" / "masks" / "a.png").resolve())
    assert co.df.loc["b", "mask_path"] is None and co.df.loc["a", "paired_path"] is None
    assert co.df.loc["a", "label"] == "1" and co.classes == ["0", "1"]
    assert list(co.split("train").df["slide_id"]) == ["a"]
    # the index is the slide id but not named, so set_index("slide_id") still works
    assert co.df.index.name is None and co.df.set_index("slide_id").index.tolist() == ["a", "b"]


def test_label_is_optional_where_no_label_is_needed(tmp_path):
    co = read_cohort(_csv(tmp_path, "slide_id,path,patient_id\na,a.tif,p1\nb,b.tif,p1\n"), require_label=False)
    assert co.slide_ids == ["a", "b"] and list(co.df["label"]) == [None, None]
    assert co.classes == [] and not co.labelled
    co = read_cohort(_csv(tmp_path, "slide_id,path,label\na,a.tif,\nb,b.tif,tumour\n"), require_label=False)
    assert co.df.loc["a", "label"] is None and co.classes == ["tumour"] and co.labelled
    with pytest.raises(InputError, match=r"missing column\(s\) path .*label optional"):
        read_cohort(_csv(tmp_path, "slide_id,label\na,0\n"), require_label=False)


def test_missing_columns_and_duplicates(tmp_path):
    with pytest.raises(InputError, match=r"missing column\(s\) label"):
        read_cohort(_csv(tmp_path, "slide_id,path\na,a.tif\n"))
    with pytest.raises(InputError, match=r"duplicate slide_id\(s\) a"):
        read_cohort(_csv(tmp_path, "slide_id,path,label\na,a.tif,0\na,b.tif,1\n"))
    with pytest.raises(InputError, match="no rows"):
        read_cohort(_csv(tmp_path, "slide_id,path,label\n"))
    with pytest.raises(InputError, match="not found"):
        read_cohort(tmp_path / "nothere.csv")


@pytest.mark.parametrize("bad_id", ["../evil", "a/b", "a\\b", "x..y", ".hidden"])
def test_unsafe_ids(tmp_path, bad_id):
    p = _csv(tmp_path, f"slide_id,path,label\n{bad_id},a.tif,0\nok,b.tif,1\n")
    with pytest.raises(InputError, match="path separators"):
        read_cohort(p)
    co = read_cohort(p, drop_invalid=True)
    assert co.slide_ids == ["ok"] and bad_id in co.invalid and "rename it" in co.invalid[bad_id]


def test_row_errors(tmp_path):
    p = _csv(tmp_path, "slide_id,path,label,split,paired_affine\na,a.tif,0,training,\nb,b.tif,,train,\n"
             "c,,1,test,\nd,d.tif,1,test,1;2;3\ne,e.tif,1,,1;0;0;0;1;0\n")
    co = read_cohort(p, drop_invalid=True)
    assert co.slide_ids == ["e"]
    assert "train|val|test" in co.invalid["a"] and "empty label" in co.invalid["b"]
    assert "empty path" in co.invalid["c"] and "six numbers" in co.invalid["d"]


def test_workspace_cohort_roundtrip(tmp_path):
    ws = Workspace(tmp_path / "run")
    with pytest.raises(InputError, match="histokd tile"):
        load_workspace_cohort(ws)
    co = read_cohort(_csv(tmp_path, "slide_id,path,label,extra\na,a.tif,0,x\n"))
    co.write(ws.cohort_csv)
    back = load_workspace_cohort(ws)
    pd.testing.assert_frame_equal(back.df.drop(columns="level0_mpp"), co.df)
    assert back.df["level0_mpp"].tolist() == [None]  # derived from RUN/tiles/<slide>.h5: not tiled yet
