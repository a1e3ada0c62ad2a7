"""One writer per artefact folder, and one cohort table per workspace (issue 16, item 2)."""

from __future__ import annotations

from pathlib import Path

import subprocess
import sys

from badinput import TILE_ARGS, cli, cohort_rows, write_cohort

from histokd.data.cohort import load_workspace_cohort

_HOLD = """
import sys, time
from histokd.workspace import writer_lock
with writer_lock(sys.argv[1], command="histokd embed -w RUN -e handcrafted"):
    print("held", flush=True)
    time.sleep(120)
"""


def _tiled(tmp_path, slide_files):
    co = write_cohort(tmp_path / "a.csv", cohort_rows(slide_files), tissue_png=slide_files.tissue_png)
    run = tmp_path / "run"
    assert cli("tile", co, "-w", run, *TILE_ARGS).exit_code == 0
    return run


def test_a_second_writer_of_one_folder_is_refused_and_others_go_on(tmp_path, slide_files):
    run = _tiled(tmp_path, slide_files)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run / "features" / "handcrafted")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = cli("embed", "-w", run, "-e", "handcrafted", "--overwrite")
        assert r.exit_code == 2
        msg = r.output.strip().splitlines()[-1]
        assert f"features/handcrafted: being written by pid {holder.pid}" in msg
        assert "histokd embed -w RUN -e handcrafted" in msg and "--wait" in msg
        assert not list((run / "features" / "handcrafted").glob("*.h5"))  # nothing written, nothing lost
        # another encoder's folder has its own writer: no conflict
        assert cli("embed", "-w", run, "-e", "efficientnet_lite0", "-j", "0").exit_code == 0
    finally:
        holder.kill()  # SIGKILL: the system releases the lock
        holder.wait()
    r = cli("embed", "-w", run, "-e", "handcrafted")
    assert r.exit_code == 0 and len(list((run / "features" / "handcrafted").glob("*.h5"))) == 8


def test_a_second_cohort_is_merged_not_shadowing_the_first(tmp_path, slide_files):
    rows = cohort_rows(slide_files)
    a = write_cohort(tmp_path / "a.csv", rows[:3] + rows[4:7], tissue_png=slide_files.tissue_png)
    b = write_cohort(tmp_path / "b.csv", [rows[3], rows[7]], tissue_png=slide_files.tissue_png)
    run = tmp_path / "run"
    assert cli("tile", a, "-w", run, *TILE_ARGS).exit_code == 0
    assert cli("tile", b, "-w", run, *TILE_ARGS).exit_code == 0
    held = load_workspace_cohort(run)
    assert sorted(held.slide_ids) == sorted(r[0] for r in rows)  # a's slides did not drop out
    r = cli("embed", "-w", run, "-e", "handcrafted")
    assert r.exit_code == 0 and len(list((run / "features" / "handcrafted").glob("*.h5"))) == 8


def test_a_cohort_that_contradicts_the_workspace_is_refused(tmp_path, slide_files):
    rows = cohort_rows(slide_files)
    run = tmp_path / "run"
    assert cli("tile", write_cohort(tmp_path / "a.csv", rows, tissue_png=slide_files.tissue_png),
               "-w", run, *TILE_ARGS).exit_code == 0
    relabelled = [[r[0], r[1], "normal" if r[2] == "tumour" else "tumour", r[3]] for r in rows]
    r = cli("tile", write_cohort(tmp_path / "b.csv", relabelled, tissue_png=slide_files.tissue_png),
            "-w", run, *TILE_ARGS)
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert "cohort.csv: slide 'n0' is already in this workspace" in line and "(8 such slides)" in line
    assert "delete" in line and "tiles are kept" in line
    assert sorted(load_workspace_cohort(run).df["label"]) == sorted(r[2] for r in rows)  # unchanged


def test_a_second_cohort_spelling_a_class_differently_is_refused_before_writing(tmp_path, slide_files):
    rows = cohort_rows(slide_files)
    run = tmp_path / "run"
    assert cli("tile", write_cohort(tmp_path / "a.csv", rows[:6], tissue_png=slide_files.tissue_png),
               "-w", run, *TILE_ARGS).exit_code == 0
    before = (run / "cohort.csv").read_bytes()
    more = [[r[0], r[1], "Tumor" if r[2] == "tumour" else r[2], r[3]] for r in rows[6:]]
    r = cli("tile", write_cohort(tmp_path / "b.csv", more, tissue_png=slide_files.tissue_png), "-w", run, *TILE_ARGS)
    assert r.exit_code == 2 and "differ only by case" in r.output and "--label-map" in r.output
    assert (run / "cohort.csv").read_bytes() == before  # the workspace's table stays readable
    assert cli("embed", "-w", run, "-e", "handcrafted", "-j", "0").exit_code == 0


def test_the_lock_record_names_the_running_command(tmp_path):
    import json
    import os
    import socket
    import sys

    import subprocess

    from histokd.workspace import writer_lock

    with writer_lock(tmp_path / "f"):
        doc = json.loads((tmp_path / "f" / ".histokd.lock.json").read_text())
    assert doc["pid"] == os.getpid() and doc["host"] == socket.gethostname()
    assert not (tmp_path / "f" / ".histokd.lock.json").exists()  # the record goes with the lock
    # another process, started as `histokd embed -w RUN`: its record names that command
    code = ("import json, sys; sys.argv = ['/usr/bin/histokd', 'embed', '-w', 'RUN']\n"
            "from histokd.workspace import writer_lock\n"
            f"with writer_lock({str(tmp_path / 'g')!r}):\n"
            f"    print(open({str(tmp_path / 'g' / '.histokd.lock.json')!r}).read())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["command"] == "histokd embed -w RUN"
