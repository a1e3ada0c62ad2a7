"""Slide formats from writers other than histokd's own, through the reader and the pipeline.

- DICOM WSI: a synthetic slide converted with ``wsidicomizer`` (JPEG 2000 lossless, and uncompressed), read
  through OpenSlide 4's DICOM support: every level's pixels equal the source's.
- A generic tiled pyramidal TIFF written by libvips (``pyvips``), read through OpenSlide.
- An OME-TIFF with a SubIFD pyramid written by ``tifffile``'s OME writer, read through tiffslide.

Each then goes through ``histokd tile`` and ``histokd embed`` beside the source slide: the same tile grid (a
lossless copy also the same features).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from slide_scene import scene
from typer.testing import CliRunner

from histokd.cli import app
from histokd.features.store import read_features
from histokd.slides.reader import open_slide
from histokd.synth.tiff import write_pyramid_tiff

MPP = 0.5


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    return write_pyramid_tiff(root / "source.tif", scene(MPP), MPP, n_levels=3, tile=256)


def _dicomize(src: Path, out: Path, lossless: str) -> Path:
    from wsidicom.codec import Channels, Jpeg2kSettings, NumpySettings
    from wsidicomizer import WsiDicomizer

    enc = Jpeg2kSettings(levels=0, channels=Channels.RGB) if lossless == "j2k" else NumpySettings()
    for name in ("wsidicom", "wsidicomizer", "opentile"):
        logging.getLogger(name).setLevel(logging.ERROR)
    files = WsiDicomizer.convert(src, out, encoding=enc, force_transcoding=True, tile_size=256, include_label=False,
                                 include_overview=False, include_thumbnail=False)
    assert len(files) == 3  # one instance per level
    return out


def _levels_equal(a_path: Path | str, b_path: Path | str) -> list[int]:
    """Max abs difference per level between two slides read through histokd's reader."""
    out = []
    with open_slide(a_path) as a, open_slide(b_path) as b:
        assert a.level_count == b.level_count and a.dimensions == b.dimensions
        assert a.mpp == pytest.approx(b.mpp, rel=1e-6)
        for lv in range(a.level_count):
            w, h = a.level_dimensions[lv]
            ra = np.asarray(a.read_region((0, 0), lv, (w, h)))[..., :3].astype(int)
            rb = np.asarray(b.read_region((0, 0), lv, (w, h)))[..., :3].astype(int)
            out.append(int(np.abs(ra - rb).max()))
    return out


@pytest.mark.parametrize("lossless", ["j2k", "uncompressed"])
def test_dicom_wsi_pixels_equal_the_source(source, tmp_path, lossless):
    dcm = _dicomize(source, tmp_path / "dcm", lossless)
    with open_slide(dcm) as s:  # the folder, as a cohort gives it
        assert s.backend == "openslide"
        assert s.properties.get("openslide.vendor") == "dicom"
    assert _levels_equal(dcm, source) == [0, 0, 0]
    one = sorted(dcm.glob("*.dcm"))[-1]  # any instance of the folder opens the whole slide
    assert _levels_equal(one, source) == [0, 0, 0]


def test_a_folder_without_dicom_files_is_one_line(tmp_path):
    from histokd.errors import SlideError

    (tmp_path / "empty").mkdir()
    with pytest.raises(SlideError, match="a folder without DICOM"):
        open_slide(tmp_path / "empty")


def _vips_tiff(src: Path, out: Path) -> Path:
    import pyvips  # a test dependency (libvips from the pyvips-binary wheel)

    with open_slide(src) as s:
        img = np.ascontiguousarray(np.asarray(s.read_region((0, 0), 0, s.dimensions))[..., :3])
    v = pyvips.Image.new_from_array(img)
    px_per_mm = 1000.0 / MPP
    v.tiffsave(str(out), tile=True, tile_width=256, tile_height=256, pyramid=True, compression="jpeg", Q=95,
               xres=px_per_mm, yres=px_per_mm, resunit="cm")
    return out


def _ome_tiff(src: Path, out: Path) -> Path:
    with open_slide(src) as s:
        levels = [np.ascontiguousarray(np.asarray(s.read_region((0, 0), lv, s.level_dimensions[lv]))[..., :3])
                  for lv in range(s.level_count)]
    meta = {"PhysicalSizeX": MPP, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": MPP, "PhysicalSizeYUnit": "µm",
            "axes": "YXS"}
    with tifffile.TiffWriter(out, ome=True, bigtiff=True) as tw:
        tw.write(levels[0], subifds=len(levels) - 1, tile=(256, 256), photometric="rgb", compression="zlib",
                 resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER", metadata=meta)
        for lv in levels[1:]:
            tw.write(lv, subfiletype=1, tile=(256, 256), photometric="rgb", compression="zlib")
    return out


def test_generic_pyramidal_tiff_and_ome_tiff(source, tmp_path):
    vips = _vips_tiff(source, tmp_path / "vips.tif")
    with open_slide(vips) as s:
        assert s.backend == "openslide" and s.level_count >= 3 and s.mpp == pytest.approx(MPP, rel=1e-3)
    diff = _levels_equal_prefix(vips, source)
    assert diff[0] <= 40 and np.mean(_mean_abs(vips, source)) < 2.0  # JPEG re-encoded at quality 95

    ome = _ome_tiff(source, tmp_path / "slide.ome.tif")
    assert tifffile.TiffFile(ome).is_ome
    assert _levels_equal(ome, source) == [0, 0, 0]  # deflate: exact


def _levels_equal_prefix(a_path: Path, b_path: Path) -> list[int]:
    with open_slide(a_path) as a, open_slide(b_path) as b:
        w, h = b.dimensions
        ra = np.asarray(a.read_region((0, 0), 0, (w, h)))[..., :3].astype(int)
        rb = np.asarray(b.read_region((0, 0), 0, (w, h)))[..., :3].astype(int)
    return [int(np.abs(ra - rb).max())]


def _mean_abs(a_path: Path, b_path: Path) -> float:
    with open_slide(a_path) as a, open_slide(b_path) as b:
        w, h = b.dimensions
        ra = np.asarray(a.read_region((0, 0), 0, (w, h)))[..., :3].astype(float)
        rb = np.asarray(b.read_region((0, 0), 0, (w, h)))[..., :3].astype(float)
    return float(np.abs(ra - rb).mean())


def test_every_format_through_tile_and_embed(source, tmp_path):
    slides = {
        "source": source,
        "dicom": _dicomize(source, tmp_path / "dcm", "j2k"),
        "vips": _vips_tiff(source, tmp_path / "vips.tif"),
        "ome": _ome_tiff(source, tmp_path / "slide.ome.tif"),
    }
    co = tmp_path / "cohort.csv"
    with co.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "path"])
        for sid, p in slides.items():
            w.writerow([sid, str(p)])
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["tile", str(co), "-w", str(run), "--mpp", "0.5", "--size", "64", "-j", "1"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["embed", "-w", str(run), "-e", "handcrafted", "-j", "0"])
    assert r.exit_code == 0, r.output
    feats = {sid: read_features(run / "features" / "handcrafted" / f"{sid}.h5") for sid in slides}
    ref = feats["source"]
    assert len(ref) > 20
    for sid in ("dicom", "ome"):  # lossless copies: the same tiles, the same features
        np.testing.assert_array_equal(feats[sid].coords, ref.coords)
        np.testing.assert_allclose(feats[sid].features, ref.features, rtol=1e-5, atol=1e-5)
    # libvips re-encoded the JPEG: the tissue mask may move by a tile at the edge, no more
    a, b = {tuple(c) for c in feats["vips"].coords}, {tuple(c) for c in ref.coords}
    assert len(a & b) >= 0.9 * len(b)
