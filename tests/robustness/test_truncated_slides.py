"""Issue 16, a truncated slide used to be read as if whole: a pyramidal TIFF cut to 75% of its bytes
tiled with exit 0 (thousands of level-0 pixels wrong), at 90% it failed with a misleading "no tissue
found". Slides are now checked when opened (``histokd.slides.integrity``, ``reader._check_tiles``) and
a truncated one is refused with one line naming the file and the fix; the other slides go on."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from badinput import TILE_ARGS, cli, cohort_rows, write_cohort

import histokd
from histokd.errors import SlideError
from histokd.slides import integrity, reader
from histokd.slides.reader import open_slide
from histokd.synth.tiff import write_pyramid_tiff

FIX = "re-copy it (an interrupted copy or download cuts a file short) or re-export it from the scanner software"


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _image(side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((side, side, 3), (230, 160, 205), np.float32) + rng.normal(0, 20, (side, side, 3))
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """512 px, 3 levels of 128 px tiles (16 tiles at level 0), JPEG."""
    return write_pyramid_tiff(tmp_path_factory.mktemp("trunc") / "whole.tif", _image(512), 0.5, n_levels=3, tile=128)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory, pyramid: Path) -> dict[str, Path]:
    """Whole TIFFs of other layouts: deflate, two channels, BigTIFF, stripped (untiled), SubIFD pyramid."""
    root = tmp_path_factory.mktemp("layouts")
    res = dict(resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    out = {"jpeg": pyramid,
           "zlib": write_pyramid_tiff(root / "zlib.tif", _image(300, 1), 0.5, n_levels=2, tile=64, compression="zlib"),
           "2ch": write_pyramid_tiff(root / "mx.tif", _image(256, 2)[..., :2].copy(), 0.5, n_levels=2, tile=64)}
    out["stripped"] = root / "stripped.tif"
    tifffile.imwrite(out["stripped"], _image(200, 3), photometric="rgb", rowsperstrip=16, **res)
    out["bigtiff"] = root / "big.tif"
    tifffile.imwrite(out["bigtiff"], _image(256, 4), bigtiff=True, tile=(64, 64), photometric="rgb",
                     compression="zlib", **res)
    out["subifd"] = root / "subifd.tif"
    base = _image(512, 5)
    with tifffile.TiffWriter(out["subifd"]) as tw:
        opts = dict(tile=(128, 128), photometric="rgb", compression="zlib", resolutionunit="CENTIMETER")
        tw.write(base, subifds=1, resolution=(2e4, 2e4), **opts)
        tw.write(base[::2, ::2], subfiletype=1, resolution=(1e4, 1e4), **opts)
    return out


def _assert_refused(path: Path) -> str:
    with pytest.raises(SlideError) as e:
        open_slide(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "corrupt or truncated" in msg and "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("fraction", [0.75, 0.9])
def test_the_issue_cases_are_refused_naming_the_file_and_the_fix(pyramid: Path, tmp_path: Path, fraction: float):
    msg = _assert_refused(_cut(pyramid, tmp_path / "cut.tif", fraction))
    assert msg.startswith(f"{tmp_path / 'cut.tif'}: slide file is corrupt or truncated: page ")
    assert "but the file has" in msg and FIX in msg


@pytest.mark.parametrize("layout", ["jpeg", "zlib", "2ch", "stripped", "bigtiff", "subifd"])
def test_whole_files_open_and_every_cut_is_refused(layouts: dict[str, Path], tmp_path: Path, layout: str):
    """No false alarm on a whole file; whatever the cut (inside an IFD, a tile, a tag list), the file
    never opens as if whole."""
    whole = layouts[layout]
    assert integrity.tiff_damage(whole) is None
    with open_slide(whole, mpp=0.5) as s:
        assert s.level_count >= 1
    data = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    for n in [*range(8, len(data), max(1, len(data) // 60)), len(data) - 1]:
        cut.write_bytes(data[:n])
        _assert_refused(cut)


def test_a_broken_page_chain_is_refused(pyramid: Path, tmp_path: Path):
    """The last page's link to a next page pointing past the end of the file (its IFD was cut off)."""
    data = bytearray(pyramid.read_bytes())
    with tifffile.TiffFile(pyramid) as tf:
        pos = tf.pages.next_page_offset
        fmt = tf.tiff.offsetformat
    struct.pack_into(fmt, data, pos, len(data) + 1000)
    bad = tmp_path / "chain.tif"
    bad.write_bytes(bytes(data))
    msg = _assert_refused(bad)
    assert "page 3 starts at byte" in msg and f"past the end of the file ({len(data)} bytes)" in msg


def test_the_check_is_cached_per_path_size_and_mtime(pyramid: Path, tmp_path: Path, monkeypatch):
    opened: list[str] = []
    real = tifffile.TiffFile

    def counting(path: Any, *a: Any, **k: Any) -> Any:
        opened.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(tifffile, "TiffFile", counting)
    copy = tmp_path / "copy.tif"
    copy.write_bytes(pyramid.read_bytes())
    assert integrity.tiff_damage(copy) is None and integrity.tiff_damage(copy) is None
    assert len(opened) == 1
    _cut(pyramid, copy, 0.75)  # same path, new size and mtime: checked again
    assert integrity.tiff_damage(copy) is not None and len(opened) == 2


def test_tiling_refuses_the_truncated_slides_and_tiles_the_others(tmp_path: Path, slide_files):
    """The issue's case through the CLI and the Python API: exit 1, one line per truncated slide, the six
    whole slides tiled, no tifffile noise."""
    t1 = _cut(slide_files.tumour[1], tmp_path / "t1_cut.tif", 0.75)
    t2 = _cut(slide_files.tumour[2], tmp_path / "t2_cut.tif", 0.90)
    rows = cohort_rows(slide_files)
    rows[5][1], rows[6][1] = str(t1), str(t2)
    cohort = write_cohort(tmp_path / "cohort.csv", rows, tissue_png=slide_files.tissue_png)
    ws = tmp_path / "run"
    r = cli("tile", cohort, "-w", ws, *TILE_ARGS)
    assert r.exit_code == 1, r.output
    assert "tiled 6 slide(s)" in r.output and "2 of 8 slides failed" in r.output, r.output
    lines = [ln.strip() for ln in r.output.splitlines() if ln.strip().startswith(("t1: ", "t2: "))]
    assert lines == [f"t1: {t1}: slide file is corrupt or truncated: page 0: tile 0 of 1 ends at byte "
                     f"{lines[0].split('ends at byte ')[1].split()[0]} but the file has {t1.stat().st_size} bytes; {FIX}, "
                     f"or drop it from the cohort",
                     lines[1]], r.output
    assert lines[1].startswith(f"t2: {t2}: slide file is corrupt or truncated: page ") and FIX in lines[1]
    assert "no tissue" not in r.output and "tifffile" not in r.output and "invalid page offset" not in r.output
    assert sorted(p.stem for p in (ws / "tiles").glob("*.h5")) == ["n0", "n1", "n2", "n3", "t0", "t3"]

    res = histokd.tile(cohort, tmp_path / "api", mpp=1.0, size=32, min_tissue=0.1, workers=1, show_progress=False)
    assert sorted(res.tiled) == ["n0", "n1", "n2", "n3", "t0", "t3"]
    assert sorted(res.failures) == ["t1", "t2"]
    assert all("corrupt or truncated" in m and FIX in m for m in res.failures.values())


# -- formats without a TIFF header: a spread of tiles is decoded at every level ----------------------
class _FakeBackend(reader._Backend):
    """A two-level non-TIFF slide whose decoder fails at ``broken`` = (level, x, y)."""

    name = "fake"
    broken: tuple[int, int, int] | None = None
    reads: list[tuple[int, int, int]] = []

    def __init__(self, path: Path) -> None:
        self.level_dimensions = [(1000, 800), (250, 200)]
        self.level_downsamples = [1.0, 4.0]
        self.channels = 3
        self.properties = {"fake.mpp": 0.5}

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        type(self).reads.append((level, x, y))
        if self.broken and self.broken[0] == level and x <= self.broken[1] < x + w and y <= self.broken[2] < y + h:
            raise OSError("Premature end of JPEG file")
        return np.full((h, w, 3), 200, np.uint8)

    def mpp(self) -> float | None:
        return 0.5

    def close(self) -> None:
        pass


@pytest.fixture()
def fake_format(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setitem(reader._BACKENDS, "fake", _FakeBackend)
    monkeypatch.setattr(_FakeBackend, "reads", [])
    monkeypatch.setattr(_FakeBackend, "broken", None)
    path = tmp_path / "slide.mrxs"
    path.write_bytes(b"not a TIFF header, some other scanner format")
    return path


def test_other_formats_decode_a_spread_of_tiles_at_every_level(fake_format: Path):
    with open_slide(fake_format, backend="fake") as s:
        assert s.level_count == 2
    reads = _FakeBackend.reads
    for level, (lw, lh) in enumerate(_FakeBackend([]).level_dimensions):  # type: ignore[arg-type]
        at = {(x, y) for lvl, x, y in reads if lvl == level}
        assert len(at) == 9  # corners, edge middles, centre
        assert (0, 0) in at and (lw - 32, lh - 32) in at and ((lw - 32) // 2, (lh - 32) // 2) in at
    n = len(reads)
    with open_slide(fake_format, backend="fake"):  # checked once per (path, size, mtime) in a process
        pass
    assert len(_FakeBackend.reads) == n


def test_other_formats_with_an_undecodable_tile_are_refused(fake_format: Path):
    _FakeBackend.broken = (1, 120, 100)  # the centre of level 1
    with pytest.raises(SlideError) as e:
        open_slide(fake_format, backend="fake")
    msg = str(e.value)
    assert msg.startswith(f"{fake_format}: slide file is corrupt or truncated: fake cannot decode level 1 at (109, 84)")
    assert "Premature end of JPEG file" in msg and FIX in msg and "\n" not in msg
