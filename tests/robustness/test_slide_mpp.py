"""Slides without resolution metadata, tiled with ``--slide-mpp`` (issue 16): every later stage that reads
their pixels opens them at the mpp they were tiled with (``level0_mpp`` of the tile grid), so they can be
labelled, reported and segmented; ``report`` used to skip them all, telling the user to pass an option it does
not have. The given mpp is part of the tiling resume key: re-tiling with another ``--slide-mpp`` used to say
"already up to date"."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
from badinput import TILE_ARGS, SlideFiles, _he, cli, cohort_rows, write_cohort

from histokd.synth.tiff import write_pyramid_tiff

SQUARE = [[0, 0], [128, 0], [128, 256], [0, 256], [0, 0]]  # the purple (tumour) left half of a test slide
NO_MPP = "no resolution (µm/px) metadata"


@pytest.fixture(scope="module")
def bare_slides(tmp_path_factory: pytest.TempPathFactory, slide_files: SlideFiles) -> list[list[str]]:
    """The eight test slides written again without resolution metadata, with a tumour GeoJSON per tumour slide."""
    root = tmp_path_factory.mktemp("bare_slides")
    gj = root / "tumour.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": "Polygon", "coordinates": [SQUARE]}}]}))
    rows = []
    for sid, _, label, split in cohort_rows(slide_files):
        tumour, i = sid[0] == "t", int(sid[1:])
        path = write_pyramid_tiff(root / f"{sid}.tif", _he(10 + i if tumour else i, tumour), None, n_levels=2)
        rows.append([sid, str(path), label, split, str(gj) if tumour else ""])
    return rows


def _cohort(tmp_path: Path, rows, slide_files: SlideFiles) -> Path:
    return write_cohort(tmp_path / "bare.csv", rows, header=("slide_id", "path", "label", "split", "mask_path"),
                        tissue_png=slide_files.tissue_png)


def _grid(run: Path, sid: str) -> tuple[int, float, str]:
    with h5py.File(run / "tiles" / f"{sid}.h5", "r") as f:
        return len(f["coords"]), float(f.attrs["level0_mpp"]), str(f.attrs["mpp_source"])


@pytest.mark.timeout(300)
def test_slides_tiled_with_slide_mpp_go_through_every_stage(tmp_path, slide_files, bare_slides):
    co = _cohort(tmp_path, bare_slides, slide_files)
    run = tmp_path / "run"
    r = cli("tile", co, "-w", run, *TILE_ARGS)  # without --slide-mpp: refused per slide, with the fix
    assert r.exit_code == 1 and NO_MPP in r.output and "--slide-mpp" in r.output
    assert cli("tile", co, "-w", run, *TILE_ARGS, "--slide-mpp", "0.5").exit_code == 0
    assert _grid(run, "t0") == (16, 0.5, "given")
    assert cli("embed", "-w", run, "-e", "handcrafted", "-j", "0").exit_code == 0
    assert cli("train", "-w", run, "--method", "abmil", "--model-id", "m", "--max-epochs", "2").exit_code == 0
    r = cli("label", "-w", run, "--model", "m", "--bootstrap", "10")
    assert r.exit_code == 0, r.output
    metrics = json.loads((run / "predictions" / "m" / "metrics.json").read_text())
    assert metrics["splits"]["all"]["instance_from_probs"]["n"] == 128  # tile truth from the masks, every slide
    r = cli("report", "-w", run, "-m", "m", "--bootstrap", "10", "--top-k", "1", "--thumbnail-size", "64")
    assert r.exit_code == 0, r.output
    assert NO_MPP not in r.output and "8 slides (0 skipped)" in " ".join(r.output.split())
    assert len(list((run / "reports" / "m" / "heatmaps").glob("*.png"))) == 8

    # the stages that read pixels for a model: IFKD (slides at work_mpp) and end-to-end WENO (tile images)
    r = cli("train", "-w", run, "--method", "ifkd", "--model-id", "seg", "--set", "teacher=m", "--set", "rounds=1",
            "--set", "epochs_per_round=1", "--set", "work_mpp=2", "--set", "region_size=16",
            "--set", "regions_per_slide=2", "--set", "batch_size=4", "--set", "widths=[4,4,8]")
    assert r.exit_code == 0 and NO_MPP not in r.output, r.output
    r = cli("label", "-w", run, "--model", "seg", "--bootstrap", "10")
    assert r.exit_code == 0 and NO_MPP not in r.output, r.output
    with h5py.File(run / "predictions" / "seg" / "t0.h5", "r") as f:
        assert f["mask"].shape == (64, 64)  # 256 px at 0.5 µm/px read at 2 µm/px
    assert "pixel" in json.loads((run / "predictions" / "seg" / "metrics.json").read_text())
    r = cli("train", "-w", run, "--method", "weno", "--model-id", "e2e", "--set", "encoder=cnn", "--set", "tile_px=16",
            "--set", "epochs=1", "--set", "hpm_warmup=0", "--set", "encoder_dim=8", "--set", "student_hidden=[8]",
            "--set", "teacher_args={hidden: [8], attn_dim: 4}")
    assert r.exit_code == 0 and NO_MPP not in r.output, r.output
    r = cli("label", "-w", run, "--model", "e2e", "--bootstrap", "10")
    assert r.exit_code == 0 and NO_MPP not in r.output, r.output
    assert len(list((run / "predictions" / "e2e").glob("*.h5"))) == 8


def test_slide_mpp_is_part_of_the_tiling_resume_key(tmp_path, slide_files, bare_slides):
    co = _cohort(tmp_path, bare_slides, slide_files)
    run = tmp_path / "run"
    assert cli("tile", co, "-w", run, *TILE_ARGS, "--slide-mpp", "0.5").exit_code == 0
    r = cli("tile", co, "-w", run, *TILE_ARGS, "--slide-mpp", "0.25")
    assert r.exit_code == 0 and "tiled 8 slide(s)" in r.output, r.output  # was "8 already up to date"
    assert _grid(run, "n1") == (4, 0.25, "given")  # 64 level-0 px tiles are now 128: 2 x 2 per slide
    r = cli("tile", co, "-w", run, *TILE_ARGS, "--slide-mpp", "0.25")
    assert "8 already up to date" in r.output
    r = cli("tile", co, "-w", run, *TILE_ARGS)  # no mpp given now: the grids keep the one they were made with
    assert r.exit_code == 0 and "8 already up to date" in r.output, r.output

    # slides with metadata: a given mpp is ignored by the reader, so it does not make them stale
    meta = write_cohort(tmp_path / "meta.csv", cohort_rows(slide_files), tissue_png=slide_files.tissue_png)
    run2 = tmp_path / "run2"
    assert cli("tile", meta, "-w", run2, *TILE_ARGS).exit_code == 0
    assert _grid(run2, "n0") == (16, 0.5, "metadata")
    r = cli("tile", meta, "-w", run2, *TILE_ARGS, "--slide-mpp", "0.3")
    assert "8 already up to date" in r.output and _grid(run2, "n0") == (16, 0.5, "metadata")
