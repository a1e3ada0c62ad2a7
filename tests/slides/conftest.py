"""Fixtures: small pyramidal test slides (see ``slide_scene.py``), bad files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from slide_scene import BG_RGB, scene

from histokd.synth.tiff import write_pyramid_tiff


@dataclass
class Slides:
    root: Path
    s025: Path  # 2048 px at 0.25 µm/px, JPEG
    s05: Path  # 1024 px at 0.5 µm/px, JPEG
    s05_lossless: Path  # 1024 px at 0.5 µm/px, deflate (exact pixels)
    nompp: Path
    blank: Path  # background only (no tissue)
    multiplex: Path  # 4 channels, 0.5 µm/px, deflate
    multiplex_data: np.ndarray


@pytest.fixture(scope="session")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Slides:
    root = tmp_path_factory.mktemp("slides")
    s025 = write_pyramid_tiff(root / "s025.tif", scene(0.25), 0.25, n_levels=4)
    s05 = write_pyramid_tiff(root / "s05.tif", scene(0.5), 0.5, n_levels=3)
    s05l = write_pyramid_tiff(root / "s05_lossless.tif", scene(0.5), 0.5, n_levels=3, compression="zlib")
    nompp = write_pyramid_tiff(root / "nompp.tif", scene(0.5), None, n_levels=3)
    blank_img = np.full((1024, 1024, 3), BG_RGB, np.uint8)
    blank = write_pyramid_tiff(root / "blank.tif", blank_img, 0.5, n_levels=3)
    rng = np.random.default_rng(1)
    mx = rng.integers(0, 256, size=(512, 512, 4)).astype(np.uint8)
    multiplex = write_pyramid_tiff(root / "multiplex.tif", mx, 0.5, n_levels=3)
    return Slides(root, s025, s05, s05l, nompp, blank, multiplex, mx)


@pytest.fixture()
def bad_files(tmp_path: Path, slides: Slides) -> dict[str, Path]:
    """A truncated TIFF, a corrupt (garbage) TIFF, an unsupported format, an empty file."""
    data = slides.s05.read_bytes()
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)))
    unsupported = tmp_path / "notes.txt"
    unsupported.write_text("this is not a slide\n" * 50)
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    return {"truncated": truncated, "corrupt": corrupt, "unsupported": unsupported, "empty": empty}
