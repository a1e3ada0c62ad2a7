"""Tiling: geometry across native resolutions, tissue, masks, h5 contract, bad input, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from histokd.cli import app
from histokd.slides.masks import load_mask, tile_fractions
from histokd.slides.reader import open_slide
from histokd.pipeline.tile import tile
from histokd.slides.tiling import grid_coords, read_tiles
from histokd.workspace import Workspace
from slide_scene import BLUE_SIZE_UM, BLUE_UM, RED_SIZE_UM, RED_UM, in_blob

SIZE, MPP = 64, 0.5  # 32 µm tiles


def _cohort(tmp_path, rows, name="cohort.csv"):
    p = tmp_path / name
    p.write_text("slide_id,path,label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    return p


@pytest.fixture(scope="module")
def tiled(slides, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiled")
    co = _cohort(tmp, [("fine", slides.s025, "tumour"), ("coarse", slides.s05, "normal")])
    res = tile(co, tmp / "run", mpp=MPP, size=SIZE, min_tissue=0.5, workers=1)
    assert res.ok, res.failures
    return tmp / "run", res


def test_grid_geometry():
    c, ps0 = grid_coords((1000, 500), 0.25, 0.5, 100, overlap=20)
    assert ps0 == 200
    xs, ys = np.unique(c[:, 0]), np.unique(c[:, 1])
    np.testing.assert_array_equal(xs, np.arange(0, 801, 160))
    np.testing.assert_array_equal(ys, np.arange(0, 301, 160))
    assert (c[:, 0] + ps0 <= 1000).all() and (c[:, 1] + ps0 <= 500).all()
    c2, ps2 = grid_coords((3000, 3000), 0.2527, 0.5, 224)  # non-integer level-0 tile size
    assert ps2 == pytest.approx(224 * 0.5 / 0.2527)
    assert np.abs(np.diff(np.unique(c2[:, 0])) - ps2).max() <= 1


def test_same_physical_grid_whatever_native_resolution(tiled):
    run, res = tiled
    fine, coarse = read_tiles(run / "tiles" / "fine.h5"), read_tiles(run / "tiles" / "coarse.h5")
    assert fine.attrs["patch_size_level0"] == 128 and coarse.attrs["patch_size_level0"] == 64
    um_f = {tuple(c) for c in (fine.coords * 0.25).tolist()}
    um_c = {tuple(c) for c in (coarse.coords * 0.5).tolist()}
    # identical except possibly tiles right at the tissue threshold
    diff = um_f ^ um_c
    assert len(diff) <= 0.05 * len(um_f), diff
    both = sorted(um_f & um_c)
    tf = dict(zip(map(tuple, (fine.coords * 0.25).tolist()), fine.tissue))
    tc = dict(zip(map(tuple, (coarse.coords * 0.5).tolist()), coarse.tissue))
    assert max(abs(tf[k] - tc[k]) for k in both) < 0.1
    assert res.tiled == {"fine": len(fine), "coarse": len(coarse)}


def test_marker_appears_in_the_right_tile_at_the_right_place(tiled, slides):
    run, _ = tiled
    tile_um = SIZE * MPP
    for sid, path, mpp0 in (("fine", slides.s025, 0.25), ("coarse", slides.s05, 0.5)):
        grid = read_tiles(run / "tiles" / f"{sid}.h5")
        with open_slide(path) as s:
            for (mx, my), msize, chan in ((RED_UM, RED_SIZE_UM, 0), (BLUE_UM, BLUE_SIZE_UM, 2)):
                tx, ty = np.floor(mx / tile_um) * tile_um, np.floor(my / tile_um) * tile_um
                idx = np.nonzero((grid.coords[:, 0] * mpp0 == tx) & (grid.coords[:, 1] * mpp0 == ty))[0]
                assert len(idx) == 1, (sid, tx, ty)
                x0, y0 = grid.coords[idx[0]]
                img = s.read_region_mpp(int(x0), int(y0), SIZE, MPP).astype(int)
                other = [c for c in range(3) if c != chan]
                hit = (img[..., chan] > 150) & (img[..., other[0]] < 100) & (img[..., other[1]] < 100)
                ys, xs = np.nonzero(hit)
                assert abs(xs.min() - (mx - tx) / MPP) <= 1 and abs(ys.min() - (my - ty) / MPP) <= 1
                assert abs(xs.max() + 1 - (mx + msize - tx) / MPP) <= 1


def test_tiles_lie_in_tissue_and_h5_contract(tiled):
    run, _ = tiled
    path = run / "tiles" / "coarse.h5"
    with h5py.File(path) as f:
        assert f["coords"].dtype == np.int64 and f["coords"].shape[1] == 2
        assert f["tissue"].dtype == np.float32 and f["tissue"].shape == (f["coords"].shape[0],)
        for k in ("patch_size", "patch_size_level0", "target_mpp", "level0_mpp", "overlap", "slide_id",
                  "slide_path", "min_tissue", "histokd_version"):
            assert k in f.attrs, k
        assert f.attrs["target_mpp"] == MPP and f.attrs["patch_size"] == SIZE and f.attrs["level0_mpp"] == 0.5
    g = read_tiles(path, with_mask=True)
    assert (g.tissue >= 0.5).all() and len(g) > 50
    ps_um = SIZE * MPP
    cx, cy = g.coords[:, 0] * 0.5 + ps_um / 2, g.coords[:, 1] * 0.5 + ps_um / 2
    assert in_blob(cx, cy, margin=1.15).all()  # centres in (a slightly grown) tissue blob
    assert (g.tissue[in_blob(cx, cy, margin=0.8)] > 0.99).all()
    # interior of the blob fully tiled: every grid tile well inside the blob is kept
    cand, _ = grid_coords((1024, 1024), 0.5, MPP, SIZE)
    ccx, ccy = cand[:, 0] * 0.5 + ps_um / 2, cand[:, 1] * 0.5 + ps_um / 2
    inner = {tuple(c) for c in cand[in_blob(ccx, ccy, margin=0.8)].tolist()}
    assert inner <= {tuple(c) for c in g.coords.tolist()}
    assert g.tissue_mask is not None and g.tissue_mask.dtype == bool
    assert (run / "tiles" / "coarse.png").stat().st_size > 1000
    assert (run / "cohort.csv").exists()


def test_mask_lines_up_with_tiles(tiled, tmp_path):
    """A GeoJSON 'tumour' rectangle: tiles inside get fraction 1, outside 0, on the edge the overlap."""
    run, _ = tiled
    g = read_tiles(run / "tiles" / "fine.h5")
    ps0 = g.attrs["patch_size_level0"]
    x0, y0, x1, y1 = 512, 1024, 1024 + 64, 1536  # level-0 px of the 0.25 µm/px slide
    poly = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    p = tmp_path / "t.geojson"
    p.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [poly]}}))
    mask, ds = load_mask(p, (2048, 2048), downsample=4)
    frac = tile_fractions(mask, ds, g.coords, ps0)
    ox = np.clip(np.minimum(g.coords[:, 0] + ps0, x1) - np.maximum(g.coords[:, 0], x0), 0, None)
    oy = np.clip(np.minimum(g.coords[:, 1] + ps0, y1) - np.maximum(g.coords[:, 1], y0), 0, None)
    want = ox * oy / ps0**2
    np.testing.assert_allclose(frac, want, atol=0.04)
    assert (frac == 1).sum() > 0 and ((frac > 0.4) & (frac < 0.6)).sum() > 0


def test_user_tissue_mask_replaces_detection(slides, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    sq = [[0, 0], [256, 0], [256, 256], [0, 256], [0, 0]]  # background corner of the 0.5 µm/px slide
    (masks / "s.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": [sq]}))
    co = _cohort(tmp_path, [("s", slides.s05, "x")])
    res = tile(co, tmp_path / "run", mpp=MPP, size=SIZE, workers=1, tissue_mask_dir=masks)
    assert res.tiled == {"s": 16}
    g = read_tiles(tmp_path / "run" / "tiles" / "s.h5")
    assert g.attrs["tissue_source"].endswith("s.geojson") and (g.coords < 256).all()
    # the same cohort without the mask is a different config: re-tiled, not skipped
    res2 = tile(co, tmp_path / "run", mpp=MPP, size=SIZE, workers=1)
    assert "s" in res2.tiled and res2.tiled["s"] > 16


def test_bad_inputs_each_reported_others_processed(slides, bad_files, tmp_path):
    rows = [("good", slides.s05, "normal"), ("nompp", slides.nompp, "normal"), ("blank", slides.blank, "normal"),
            ("missing", tmp_path / "nope.tif", "normal"), ("evil..id", slides.s05, "tumour"),
            *[(k, p, "normal") for k, p in bad_files.items()]]
    co = _cohort(tmp_path, rows)
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["tile", str(co), "-w", str(run), "--mpp", "0.5", "--size", "64", "--workers", "1"])
    assert r.exit_code == 1, r.output
    err = r.stderr if hasattr(r, "stderr") else r.output
    assert f"{len(rows) - 1} of {len(rows)} slides failed" in err
    expect = {"nompp": "--slide-mpp", "blank": "no tissue found", "missing": "not found",
              "evil..id": "path separators", "truncated": "corrupt or truncated", "corrupt": "corrupt or truncated",
              "unsupported": "unsupported", "empty": "empty"}
    lines = [ln for ln in err.splitlines() if ln.startswith("  ")]
    for sid, pattern in expect.items():
        line = next(ln for ln in lines if ln.startswith(f"  {sid}: "))
        assert pattern in line, line
    tiles = sorted(p.name for p in (run / "tiles").iterdir())
    assert "good.h5" in tiles and not [t for t in tiles if t.endswith(".h5") and t != "good.h5"]
    assert not [t for t in tiles if t.endswith(".tmp")]
    assert "blank.png" in tiles  # the QC image shows why there is no tissue
    # the mpp fallback fixes the no-mpp slide; the rest stay failed and are re-reported
    r2 = CliRunner().invoke(app, ["tile", str(co), "-w", str(run), "--mpp", "0.5", "--size", "64", "--workers", "1",
                                  "--slide-mpp", "0.5"])
    assert r2.exit_code == 1 and (run / "tiles" / "nompp.h5").exists()
    assert "1 already up to date" in r2.output


def test_cohort_level_errors_stop_before_work(tmp_path, slides):
    run = tmp_path / "run"
    for text, pattern in (("slide_id,label\na,0\n", "missing column(s) path"),
                          (f"slide_id,path,label\na,{slides.s05},0\na,{slides.s05},1\n", "duplicate slide_id")):
        co = tmp_path / "c.csv"
        co.write_text(text)
        r = CliRunner().invoke(app, ["tile", str(co), "-w", str(run)])
        assert r.exit_code == 2 and pattern in r.output
        assert not (run / "tiles").exists()


def test_resume_after_interruption_gives_same_tiles(slides, tmp_path):
    co = _cohort(tmp_path, [("fine", slides.s025, "t"), ("coarse", slides.s05, "n"), ("lossless", slides.s05_lossless, "n")])
    run = tmp_path / "run"
    first = tile(co, run, mpp=MPP, size=SIZE, workers=1)
    assert first.ok and len(first.tiled) == 3
    ref = {sid: read_tiles(Workspace(run).tiles_h5(sid)) for sid in first.tiled}
    mtime = os.path.getmtime(run / "tiles" / "fine.h5")
    # simulate a killed run: one output missing, one half-written (truncated), a stale temp file
    (run / "tiles" / "coarse.h5").unlink()
    data = (run / "tiles" / "lossless.h5").read_bytes()
    (run / "tiles" / "lossless.h5").write_bytes(data[: len(data) // 3])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # the killed run's temp names carry its (now gone) pid
    stale = run / "tiles" / f".coarse.h5.histokd-{dead.pid}-abc123.tmp"
    stale.write_bytes(b"partial")
    again = tile(co, run, mpp=MPP, size=SIZE, workers=1)
    assert again.ok and set(again.tiled) == {"coarse", "lossless"} and set(again.skipped) == {"fine"}
    assert not stale.exists() and os.path.getmtime(run / "tiles" / "fine.h5") == mtime
    for sid, g in ref.items():
        new = read_tiles(Workspace(run).tiles_h5(sid))
        np.testing.assert_array_equal(new.coords, g.coords)
        np.testing.assert_array_equal(new.tissue, g.tissue)
    # a different config is not "up to date"; --overwrite forces
    assert set(tile(co, run, mpp=MPP, size=SIZE, min_tissue=0.9, workers=1).tiled) == {"fine", "coarse", "lossless"}
    assert set(tile(co, run, mpp=MPP, size=SIZE, min_tissue=0.9, workers=1, overwrite=True).tiled) == {
        "fine", "coarse", "lossless"}


@pytest.mark.slow
def test_killed_subprocess_then_resume(slides, tmp_path):
    """Kill a real `histokd tile` run with 2 spawned workers mid-way; the rerun completes with the same tiles."""
    rows = [(f"s{i}", slides.s025 if i % 2 else slides.s05, "x") for i in range(6)]
    co = _cohort(tmp_path, rows)
    run = tmp_path / "run"
    env = dict(os.environ, HISTOKD_NO_PROGRESS="1")
    cmd = [sys.executable, "-c", "from histokd.cli import app; app()", "tile", str(co), "-w", str(run),
        "--mpp", "0.5", "--size", "64", "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def children() -> set[int]:
        """The run's tiling workers (spawned pool processes; not multiprocessing's resource tracker)."""
        out = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != proc.pid:
                    continue
                if b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                    out.add(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return out

    workers: set[int] = set()
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list((run / "tiles").glob("*.h5")):
            workers |= children()
            time.sleep(0.05)
        workers |= children()
        assert proc.poll() is None, "the run ended before it could be killed mid-way"
        proc.kill()
    finally:
        proc.wait(timeout=30)
    if sys.platform.startswith("linux"):  # the workers die with their parent (issue: they tiled on for minutes)
        assert len(workers) >= 2
        deadline = time.time() + 5
        while time.time() < deadline and any(Path(f"/proc/{w}").exists() and "Z" not in _proc_state(w)
                                             for w in workers):
            time.sleep(0.05)
        assert not [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in _proc_state(w)]
    else:
        time.sleep(1.0)  # the workers' parent watch ends them within half a second
    n_done = len(list((run / "tiles").glob("*.h5")))
    assert n_done < 6, "every slide was tiled before the kill"
    done = tile(co, run, mpp=MPP, size=SIZE, workers=2)
    assert done.ok and len(done.tiled) + len(done.skipped) == 6 and len(done.tiled) >= 6 - n_done
    ref = tile(co, tmp_path / "ref", mpp=MPP, size=SIZE, workers=1)
    for sid in ref.tiled:
        a, b = read_tiles(run / "tiles" / f"{sid}.h5"), read_tiles(tmp_path / "ref" / "tiles" / f"{sid}.h5")
        np.testing.assert_array_equal(a.coords, b.coords)
        np.testing.assert_array_equal(a.tissue, b.tissue)
    assert not list((run / "tiles").glob(".*.tmp"))


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
