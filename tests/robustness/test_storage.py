"""Read-only and full storage, missing run folders and workspaces of another format: one line each (issue 16)."""

from __future__ import annotations

import errno
import json
import os

import pytest
from badinput import TILE_ARGS, cli, cohort_rows, write_cohort

from histokd.workspace import WORKSPACE_FORMAT


@pytest.fixture()
def run(tmp_path, slide_files):
    co = write_cohort(tmp_path / "a.csv", cohort_rows(slide_files), tissue_png=slide_files.tissue_png)
    run = tmp_path / "run"
    assert cli("tile", co, "-w", run, *TILE_ARGS).exit_code == 0
    return run


def test_the_workspace_records_its_format_and_refuses_another(run):
    doc = json.loads((run / "histokd.json").read_text())
    assert doc["workspace_format"] == WORKSPACE_FORMAT
    (run / "histokd.json").write_text(json.dumps({"workspace_format": WORKSPACE_FORMAT + 1, "histokd_version": "9.0"}))
    r = cli("embed", "-w", run, "-e", "handcrafted")
    assert r.exit_code == 2
    assert f"written by histokd 9.0 (workspace format {WORKSPACE_FORMAT + 1})" in r.output
    assert "upgrade histokd" in r.output and not (run / "features").exists()
    (run / "histokd.json").write_text("{not json")
    r = cli("embed", "-w", run, "-e", "handcrafted")
    assert r.exit_code == 2 and "histokd.json: not a histokd workspace record" in r.output


def test_a_workspace_from_before_the_record_gets_one(run):
    (run / "histokd.json").unlink()
    assert cli("embed", "-w", run, "-e", "handcrafted", "-j", "0").exit_code == 0
    assert json.loads((run / "histokd.json").read_text())["workspace_format"] == WORKSPACE_FORMAT


def test_a_missing_run_folder_is_not_created(tmp_path):
    r = cli("embed", "-w", tmp_path / "typo", "-e", "handcrafted")
    assert r.exit_code == 2 and "typo: no such run folder; check -w" in r.output
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(("code", "text"), [
    (errno.EROFS, "Read-only file system; make it"),
    (errno.EACCES, "Permission denied; make it"),
    (errno.ENOSPC, "no space left on the device"),
])
def test_read_only_and_full_storage_are_one_line(run, monkeypatch, code, text):
    import histokd.workspace as w

    real = w.atomic_path

    def refusing(path):  # the file system refuses the first artefact write
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(w, "atomic_path", refusing)
    monkeypatch.setattr("histokd.features.store.atomic_path", refusing)
    r = cli("embed", "-w", run, "-e", "handcrafted", "-j", "0")
    monkeypatch.setattr(w, "atomic_path", real)
    assert r.exit_code in (1, 2)
    lines = [ln for ln in r.output.splitlines() if text in ln]
    assert lines and all("features/handcrafted" in ln or "histokd.lock" in ln for ln in lines)
    assert "rerun with -v" not in r.output and "Traceback" not in r.output
    assert "features/handcrafted" in r.output or "histokd.lock" in r.output
