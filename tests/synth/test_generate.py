"""Cohort files, labels, splits, masks and their alignment with what was drawn."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage as ndi
from shapely.geometry import shape

from histokd.errors import InputError
from histokd.synth.generate import CSV_COLUMNS, generate_cohort, plan_cohort, synth
from histokd.synth.params import resolve_params

SIZE = 1024  # side of the conftest cohort


def _rows(cohort: Path) -> list[dict[str, str]]:
    with open(cohort / "cohort.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_cohort_csv_columns_and_relative_paths(cohort: Path, load_meta) -> None:
    rows = _rows(cohort)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert {r["label"] for r in rows} == {"tumour", "normal"}
    assert sum(r["label"] == "tumour" for r in rows) == 2
    for r in rows:
        for col in ("path", "mask_path", "paired_path"):
            assert not Path(r[col]).is_absolute()
            assert (cohort / r[col]).is_file(), r[col]
        assert r["split"] in {"train", "val", "test"}
    # mpp alternates within each class, so resolution does not give the label away
    for lab in ("tumour", "normal"):
        mpps = {load_meta(cohort, r["slide_id"])["mpp"] for r in rows if r["label"] == lab}
        assert mpps == {0.5, 0.25}


def test_plan_is_stratified_and_half_positive() -> None:
    specs = plan_cohort(16, 0, resolve_params("easy"))
    assert sum(s.positive for s in specs) == 8
    for lab in ("tumour", "normal"):
        splits = [s.split for s in specs if s.label == lab]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (4, 2, 2)
    assert len({s.slide_id for s in specs}) == 16


def _mask(cohort: Path, slide_id: str) -> np.ndarray:
    return np.asarray(Image.open(cohort / "masks" / f"{slide_id}.png")) > 0


def test_masks_positive_nonempty_negative_empty(cohort: Path, load_meta) -> None:
    for r in _rows(cohort):
        m = _mask(cohort, r["slide_id"])
        meta = load_meta(cohort, r["slide_id"])
        assert SIZE / m.shape[1] == meta["mask_downsample"] == 16
        gj = json.loads((cohort / "annotations" / f"{r['slide_id']}.geojson").read_text())
        assert gj["type"] == "FeatureCollection"
        if r["label"] == "tumour":
            assert m.sum() > 0 and meta["tumour_fraction"] > 0 and meta["lesions"]
            assert gj["features"]
            for f in gj["features"]:
                assert f["properties"]["classification"]["name"] == "Tumor"
            # polygons (level-0 px) cover the same area as the mask
            area = sum(shape(f["geometry"]).area for f in gj["features"])
            assert area == pytest.approx(m.sum() * 16**2, rel=0.1)
        else:
            assert m.sum() == 0 and gj["features"] == [] and meta["lesions"] == []


def _level(path: Path, level: int, key: int = 0) -> np.ndarray:
    with tifffile.TiffFile(path) as tf:
        return tf.pages[level].asarray()


def _nuclei_stats(rgb: np.ndarray, region: np.ndarray) -> tuple[float, float, float]:
    """Nuclear pixels (dark) in ``region``: their area fraction, the 90th percentile of their distance to
    the nuclear edge (px; ~ nuclear radius, robust to touching nuclei) and their mean darkness."""
    grey = rgb.astype(np.float32).mean(axis=2)
    nuc = grey < 150
    sel = nuc & region
    assert sel.sum() > 100
    edt = ndi.distance_transform_edt(nuc)
    frac = float(sel.sum() / region.sum())
    return frac, float(np.percentile(edt[sel], 90)), float((255 - grey[sel]).mean())


def test_mask_aligned_with_tumour_nuclei(cohort: Path, load_meta) -> None:
    for r in _rows(cohort):
        if r["label"] != "tumour":
            continue
        meta = load_meta(cohort, r["slide_id"])
        rgb = _level(cohort / r["path"], 0)
        m = np.kron(_mask(cohort, r["slide_id"]), np.ones((16, 16), dtype=bool))[:SIZE, :SIZE]
        tissue = rgb.astype(np.float32).mean(axis=2) < 215
        tissue = ndi.binary_closing(tissue, iterations=5)
        # normal tissue: away from the lesions and from the lymphocyte aggregates (dark confounders)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        lymph = np.zeros_like(m)
        for b in meta["lymph_regions"]:
            lymph |= np.hypot(xx - b["centre_x"], yy - b["centre_y"]) < b["max_radius_px"] + 10
        outside = tissue & ~ndi.binary_dilation(m, iterations=20) & ~lymph
        inside = ndi.binary_erosion(m, iterations=8)
        f_in, r_in, d_in = _nuclei_stats(rgb, inside)
        f_out, r_out, d_out = _nuclei_stats(rgb, outside)
        assert r_in > 2 * r_out, (r["slide_id"], r_in, r_out)  # tumour nuclei ~13 µm vs ~7 µm
        assert f_in > 2 * f_out  # denser
        assert d_in > d_out + 10  # darker


def test_paired_aligned_and_tumour_marker_separates(cohort: Path) -> None:
    for r in _rows(cohort):
        with tifffile.TiffFile(cohort / r["paired_path"]) as tp, tifffile.TiffFile(cohort / r["path"]) as th:
            assert len(tp.pages) == len(th.pages) >= 3
            for a, b in zip(tp.pages, th.pages):
                assert a.shape[:2] == b.shape[:2]
                assert a.tags["XResolution"].value == b.tags["XResolution"].value
            paired = tp.pages[0].asarray()
        assert paired.shape == (SIZE, SIZE, 4) and paired.dtype == np.uint8
        m = np.kron(_mask(cohort, r["slide_id"]), np.ones((16, 16), dtype=bool))
        marker = paired[..., 1].astype(np.float32)
        tissue = paired[..., 0] + paired[..., 3] > 12
        if r["label"] == "tumour":
            inside = ndi.binary_erosion(m, iterations=8)
            assert marker[inside].mean() > 4 * marker[tissue & ~m].mean()
        else:
            assert marker[tissue].mean() < 40


def test_bad_arguments_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="slides"):
        synth(tmp_path, slides=0, size=512, workers=1, show_progress=False)
    with pytest.raises(InputError, match="multiple"):
        synth(tmp_path, slides=1, size=520, workers=1, show_progress=False)
    with pytest.raises(InputError, match="unknown"):
        synth(tmp_path, slides=1, size=512, overrides={"no_such_knob": 1}, show_progress=False)
    with pytest.raises(InputError, match="preset"):
        synth(tmp_path, slides=1, size=512, preset="impossible", show_progress=False)
    assert not (tmp_path / "cohort.csv").exists()


def test_deterministic_across_worker_counts_and_resumable(tmp_path: Path) -> None:
    a = synth(tmp_path / "a", slides=2, seed=11, size=512, workers=1, show_progress=False).parent
    b = synth(tmp_path / "b", slides=2, seed=11, size=512, workers=2, show_progress=False).parent
    c = synth(tmp_path / "c", slides=2, seed=12, size=512, workers=1, show_progress=False).parent
    for sid in ("synth_000", "synth_001"):
        for sub in ("slides", "paired"):
            pa, pb = _level(a / sub / f"{sid}.tiff", 0), _level(b / sub / f"{sid}.tiff", 0)
            assert pa.tobytes() == pb.tobytes()
        assert (a / "masks" / f"{sid}.png").read_bytes() == (b / "masks" / f"{sid}.png").read_bytes()
    other = _level(c / "slides/synth_000.tiff", 0)
    assert _level(a / "slides/synth_000.tiff", 0).tobytes() != other.tobytes()
    # a second run keeps the finished slides
    before = (a / "slides/synth_000.tiff").stat().st_mtime_ns
    res = generate_cohort(a, slides=2, seed=11, size=512, workers=1, show_progress=False)
    assert res.skipped == 2 and not res.failures
    assert (a / "slides/synth_000.tiff").stat().st_mtime_ns == before
    assert not list(a.rglob("*.tmp"))
