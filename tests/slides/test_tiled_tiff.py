"""Direct tile decoding of tiled TIFFs (histokd.slides.tiled_tiff): OpenSlide's exact pixels, or not used."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from histokd.errors import SlideError
from histokd.slides.reader import open_slide
from histokd.slides.tiled_tiff import TiledTiffLevels
from histokd.synth.tiff import write_pyramid_tiff


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = np.kron(base, np.ones((8, 8, 1), np.uint8))[:h, :w]
    return np.clip(img.astype(np.int16) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", params=["jpeg", "deflate"])
def pyramid(request, tmp_path_factory):
    # 1000 x 700: neither side a multiple of the 256-px tile, so the edge tiles are partial
    path = tmp_path_factory.mktemp("tt") / f"p_{request.param}.tiff"
    return write_pyramid_tiff(path, _texture(700, 1000), mpp=0.5, n_levels=3, compression=request.param)


def test_direct_reads_equal_openslide_everywhere(pyramid):
    fast, ref = open_slide(pyramid), open_slide(pyramid, backend="openslide")
    assert ref._direct is None  # an explicit backend reads through that library alone
    assert fast._direct is not None and all(fast._direct.has(lvl) for lvl in range(fast.level_count))
    rng = np.random.default_rng(1)
    W, H = fast.dimensions
    for _ in range(150):
        size = int(rng.integers(1, 400))
        x, y = int(rng.integers(-60, W)), int(rng.integers(-60, H))
        mpp = fast.mpp * float(rng.choice([1.0, 1.5, 2.0, 3.3, 4.0]))
        assert np.array_equal(fast.read_region_mpp(x, y, size, mpp), ref.read_region_mpp(x, y, size, mpp))
    for lvl in range(fast.level_count):  # whole levels, edge tiles included
        w, h = fast.level_dimensions[lvl]
        assert np.array_equal(fast.read_region((0, 0), lvl, (w, h)), ref.read_region((0, 0), lvl, (w, h)))


def test_small_cache_still_reads_right_and_stays_bounded(pyramid):
    ref = open_slide(pyramid, backend="openslide")
    slide = open_slide(pyramid)
    slide._direct._max_bytes = 3 * 256 * 256 * 3
    for x in range(0, 1000 - 224, 97):
        assert np.array_equal(slide.read_region((x, 300), 0, (224, 224)), ref.read_region((x, 300), 0, (224, 224)))
        assert slide._direct._cache_bytes <= slide._direct._max_bytes
    slide.close()
    assert slide._direct is None


def test_a_level_that_decodes_otherwise_is_left_to_the_backend(pyramid):
    ref = open_slide(pyramid, backend="openslide")

    def off_by_one(level, x, y, w, h):
        return ref._b.read(level, x, y, w, h).astype(np.int16).__add__(1).clip(0, 255).astype(np.uint8)

    assert TiledTiffLevels.open(pyramid, ref.level_dimensions, off_by_one) is None

    def level1_differs(level, x, y, w, h):
        return off_by_one(level, x, y, w, h) if level == 1 else ref._b.read(level, x, y, w, h)

    reader = TiledTiffLevels.open(pyramid, ref.level_dimensions, level1_differs)
    assert reader is not None and reader.has(0) and not reader.has(1) and reader.has(2)
    reader.close()


def test_strip_tiffs_and_multiplex_are_not_read_directly(tmp_path):
    strips = tmp_path / "strips.tif"
    tifffile.imwrite(strips, _texture(300, 400), photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    assert open_slide(strips)._direct is None
    multi = write_pyramid_tiff(tmp_path / "mx.tiff", _texture(512, 512)[..., :2].copy(), mpp=0.5, n_levels=2,
                               compression="deflate")
    assert open_slide(multi)._direct is None


def test_a_damaged_tile_is_one_line_naming_the_file(tmp_path):
    path = write_pyramid_tiff(tmp_path / "bad.tiff", _texture(700, 1000), mpp=0.5, n_levels=2)
    with tifffile.TiffFile(path) as tf:
        off, cnt = tf.pages[0].dataoffsets[1], tf.pages[0].databytecounts[1]  # the second tile of level 0
    raw = bytearray(path.read_bytes())
    raw[off + 2 : off + cnt] = b"\x00" * (cnt - 2)  # keep the JPEG start marker, lose the rest
    path.write_bytes(bytes(raw))
    slide = open_slide(path)
    assert slide._direct is not None and slide._direct.has(0)
    with pytest.raises(SlideError) as e:
        slide.read_region((256, 0), 0, (256, 256))
    msg = str(e.value)
    assert str(path) in msg and "corrupt" in msg and "\n" not in msg
    assert slide.read_region((512, 256), 0, (256, 256)).std() > 0  # the other tiles still read
