"""``kill -9`` of ``histokd embed`` mid-slide, then the same command again: the files equal a clean run's."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from badinput import TILE_ARGS, cli, cohort_rows, write_cohort

from histokd.features.store import read_features


@pytest.mark.slow
def test_embed_killed_mid_slide_resumes_to_a_clean_runs_files(tmp_path, slide_files):
    co = write_cohort(tmp_path / "a.csv", cohort_rows(slide_files), tissue_png=slide_files.tissue_png)
    run, ref = tmp_path / "run", tmp_path / "ref"
    for w in (run, ref):
        assert cli("tile", co, "-w", w, *TILE_ARGS).exit_code == 0
    fdir = run / "features" / "handcrafted"
    cmd = [sys.executable, "-c", "from histokd.cli import app; app()", "embed", "-w", str(run), "-e", "handcrafted",
           "--batch-size", "1", "-j", "0"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, HISTOKD_NO_PROGRESS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(fdir.glob(".*.h5.histokd-*.tmp")):
            time.sleep(0.001)
        assert proc.poll() is None, "embed finished before it could be killed mid-slide"
        proc.kill()  # SIGKILL, while a slide's temp file is open
    finally:
        proc.wait(timeout=30)
    done = {p.name for p in fdir.glob("*.h5")}
    assert len(done) < 8 and list(fdir.glob(".*.tmp"))  # killed mid-run, a half-written temp file left
    assert cli("embed", "-w", run, "-e", "handcrafted", "-j", "0").exit_code == 0
    assert cli("embed", "-w", ref, "-e", "handcrafted", "-j", "0").exit_code == 0
    assert not list(fdir.glob(".*.tmp"))  # the dead run's temp file is gone
    names = sorted(p.name for p in (ref / "features" / "handcrafted").glob("*.h5"))
    assert sorted(p.name for p in fdir.glob("*.h5")) == names and len(names) == 8
    for n in names:
        a, b = read_features(fdir / n), read_features(ref / "features" / "handcrafted" / n)
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.coords, b.coords)
