"""The synthetic slides read back through OpenSlide and tiffslide with the right mpp, levels and pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tiffslide

SIZE = 1024  # side of the conftest cohort

IDS = ["synth_000", "synth_001", "synth_002", "synth_003"]


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_slides_read_back(cohort: Path, backend: str, load_meta) -> None:
    opener = openslide.OpenSlide if backend == "openslide" else tiffslide.TiffSlide
    seen_mpps = set()
    for sid in IDS:
        meta = load_meta(cohort, sid)
        with opener(str(cohort / "slides" / f"{sid}.tiff")) as s:
            assert s.level_count >= 3
            assert s.dimensions == (SIZE, SIZE)
            mpp = float(s.properties[f"{backend}.mpp-x"])
            assert mpp == pytest.approx(meta["mpp"], rel=1e-3)
            seen_mpps.add(meta["mpp"])
            assert s.level_downsamples[2] == pytest.approx(4.0)
            lvl0 = np.asarray(s.read_region((0, 0), 0, (SIZE, SIZE)).convert("RGB"), dtype=np.float32)
            w2, h2 = s.level_dimensions[2]
            lvl2 = np.asarray(s.read_region((0, 0), 2, (w2, h2)).convert("RGB"), dtype=np.float32)
        # level 2 is a 4x box downsample of level 0, up to JPEG error
        box = lvl0.reshape(h2, 4, w2, 4, 3).mean(axis=(1, 3))
        assert np.abs(box - lvl2).mean() < 4.0
        assert lvl2.std() > 10  # not an empty (zero or white) level
    assert seen_mpps == {0.25, 0.5}
