"""Slide reader: both backends, mpp, levels, pixels, target-mpp reads, multi-channel, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from histokd.errors import SlideError
from histokd.slides import reader as reader_mod
from histokd.slides.reader import open_slide

from slide_scene import BLUE_SIZE_UM, BLUE_UM, RED_SIZE_UM, RED_UM, TISSUE_RGB


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_both_backends_read_mpp_levels_and_pixels(slides, backend):
    with open_slide(slides.s025, backend=backend) as s:
        assert s.backend == backend
        assert s.mpp == pytest.approx(0.25)
        assert s.dimensions == (2048, 2048)
        assert s.level_count == 4
        assert s.level_dimensions == [(2048, 2048), (1024, 1024), (512, 512), (256, 256)]
        assert s.level_downsamples == pytest.approx([1, 2, 4, 8])
        # centre of the red marker, read at level 0 and level 1 (location always in level-0 px)
        cx, cy = int((RED_UM[0] + RED_SIZE_UM / 2) / 0.25), int((RED_UM[1] + RED_SIZE_UM / 2) / 0.25)
        for level in (0, 1):
            px = s.read_region((cx - 4, cy - 4), level, (4, 4))
            assert px.shape == (4, 4, 3) and px.dtype == np.uint8
            r, g, b = px.reshape(-1, 3).mean(0)
            assert r > 180 and g < 80 and b < 80, (level, px.reshape(-1, 3).mean(0))
        # tissue at the blob centre, level 2
        px = s.read_region((1024, 1200), 2, (3, 3)).reshape(-1, 3).mean(0)
        assert np.abs(px - np.array(TISSUE_RGB)).max() < 20


def test_backends_agree(slides):
    with open_slide(slides.s05, backend="openslide") as a, open_slide(slides.s05, backend="tiffslide") as b:
        for level in range(a.level_count):
            ra = a.read_region((96, 256), level, (64, 48)).astype(int)
            rb = b.read_region((96, 256), level, (64, 48)).astype(int)
            assert np.abs(ra - rb).mean() < 2.0, level


def test_read_region_mpp_same_physical_region_whatever_native_resolution(slides):
    with open_slide(slides.s025) as fine, open_slide(slides.s05) as coarse:
        x_um, y_um = 150.0, 250.0
        a = fine.read_region_mpp(int(x_um / 0.25), int(y_um / 0.25), 64, 0.5)
        b = coarse.read_region_mpp(int(x_um / 0.5), int(y_um / 0.5), 64, 0.5)
        assert a.shape == b.shape == (64, 64, 3)
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 6
        # the red marker is at (RED_UM - (x_um, y_um)) / 0.5 output px
        ox, oy = int((RED_UM[0] - x_um) / 0.5), int((RED_UM[1] - y_um) / 0.5)
        n = int(RED_SIZE_UM / 0.5)
        for img in (a, b):
            red = (img[..., 0] > 150) & (img[..., 1] < 90)
            ys, xs = np.nonzero(red)
            assert abs(xs.min() - ox) <= 1 and abs(ys.min() - oy) <= 1
            assert abs(xs.max() - (ox + n - 1)) <= 1 and abs(ys.max() - (oy + n - 1)) <= 1


def test_read_region_mpp_sizes_levels_and_upsampling(slides):
    with open_slide(slides.s025) as s:
        assert s.best_level_for_mpp(0.25) == 0
        assert s.best_level_for_mpp(0.5) == 1
        assert s.best_level_for_mpp(0.9) == 1
        assert s.best_level_for_mpp(1.0) == 2
        assert s.best_level_for_mpp(100) == 3
        assert s.best_level_for_mpp(0.1) == 0
        assert s.read_region_mpp(10, 20, (30, 17), 0.7).shape == (17, 30, 3)
        up = s.read_region_mpp(0, 0, 40, 0.125)  # finer than native: upsampled
        assert up.shape == (40, 40, 3)
        # out of the slide: white background padding
        out = s.read_region_mpp(2040, 2040, 32, 0.5)
        assert out[-1, -1].min() == 255 and out[0, 0].max() < 255


def test_read_region_mpp_is_area_average(slides):
    # lossless slide: a 2x-coarser read equals the 2x2 mean of level 0 (within rounding)
    with open_slide(slides.s05_lossless, backend="tiffslide") as s:
        full = s.read_region((100, 100), 0, (64, 64)).astype(float)
        half = s.read_region_mpp(100, 100, 32, 1.0).astype(float)
        want = full.reshape(32, 2, 32, 2, 3).mean((1, 3))
        assert np.abs(half - want).max() <= 2.0


def test_thumbnail_and_read_at_mpp(slides):
    with open_slide(slides.s025) as s:
        th = s.get_thumbnail(300)
        assert th.shape == (300, 300, 3)
        low = s.read_at_mpp(4.0)
        assert low.shape == (128, 128, 3)
        # blue marker centre visible at 2 µm/px
        mid = s.read_at_mpp(2.0)
        bx, by = int((BLUE_UM[0] + BLUE_SIZE_UM / 2) / 2), int((BLUE_UM[1] + BLUE_SIZE_UM / 2) / 2)
        r, g, b = mid[by, bx].astype(int)
        assert b > 150 and r < 110


def test_multichannel_paired_slide(slides):
    with open_slide(slides.multiplex) as s:
        assert s.backend == "tiffslide" and s.channels == 4 and s.mpp == pytest.approx(0.5)
        ch = s.read_region_channels(64, 32, (40, 24), 0.5)
        assert ch.shape == (24, 40, 4)
        np.testing.assert_array_equal(ch, slides.multiplex_data[32:56, 64:104])
        half = s.read_region_channels(64, 32, 20, 1.0).astype(float)
        want = slides.multiplex_data[32:72, 64:104].astype(float).reshape(20, 2, 20, 2, 4).mean((1, 3))
        assert np.abs(half - want).max() <= 2.0
        with pytest.raises(SlideError, match="read_region_channels"):
            s.read_region_mpp(0, 0, 8, 0.5)


def test_no_mpp_is_an_error_unless_given(slides):
    with pytest.raises(SlideError, match=r"no resolution \(µm/px\) metadata; pass --slide-mpp") as e:
        open_slide(slides.nompp)
    assert str(slides.nompp) in str(e.value) and "\n" not in str(e.value)
    with open_slide(slides.nompp, mpp=0.5) as s:
        assert s.mpp == 0.5
    with open_slide(slides.s05, mpp=0.3) as s:  # metadata wins over the fallback
        assert s.mpp == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kind, pattern",
    [
        ("truncated", "corrupt or truncated"),
        ("corrupt", "corrupt or truncated"),
        ("unsupported", "unsupported or unreadable slide format"),
        ("empty", "empty"),
    ],
)
def test_bad_files_raise_one_line_slide_errors(bad_files, kind, pattern):
    with pytest.raises(SlideError, match=pattern) as e:
        open_slide(bad_files[kind])
    msg = str(e.value)
    assert str(bad_files[kind]) in msg and "\n" not in msg and ";" in msg


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match="slide file not found"):
        open_slide(tmp_path / "nope.svs")


def test_subifd_pyramid_falls_back_to_tiffslide(tmp_path):
    base = np.full((1024, 1024, 3), 240, np.uint8)
    base[300:700, 200:800] = (200, 100, 150)
    path = tmp_path / "subifd.tif"
    with tifffile.TiffWriter(path) as tw:
        opts = dict(tile=(256, 256), photometric="rgb", compression="zlib", resolutionunit="CENTIMETER")
        tw.write(base, subifds=2, resolution=(2e4, 2e4), **opts)
        tw.write(base[::2, ::2], subfiletype=1, resolution=(1e4, 1e4), **opts)
        tw.write(base[::4, ::4], subfiletype=1, resolution=(5e3, 5e3), **opts)
    with open_slide(path) as s:
        assert s.backend == "tiffslide" and s.level_count == 3 and s.mpp == pytest.approx(0.5)
        assert tuple(s.read_region((400, 400), 2, (1, 1))[0, 0]) == (200, 100, 150)


def test_empty_reduced_level_falls_back_to_tiffslide(slides, monkeypatch):
    """OpenSlide returning transparent zeros for a reduced level (SubIFD/OME bug) -> tiffslide."""
    real = reader_mod._OpenSlideBackend.read_rgba

    def zeros_on_reduced(self, level, x, y, w, h):
        if level > 0:
            return np.zeros((h, w, 4), np.uint8)
        return real(self, level, x, y, w, h)

    monkeypatch.setattr(reader_mod._OpenSlideBackend, "read_rgba", zeros_on_reduced)
    with open_slide(slides.s05) as s:
        assert s.backend == "tiffslide"
    with pytest.raises(SlideError, match="backend='tiffslide'"):
        open_slide(slides.s05, backend="openslide")
    # a slide that is empty at every level is not a broken pyramid: OpenSlide keeps it
    monkeypatch.setattr(reader_mod._OpenSlideBackend, "read_rgba",
                        lambda self, level, x, y, w, h: np.zeros((h, w, 4), np.uint8))
    with open_slide(slides.s05) as s:
        assert s.backend == "openslide"
