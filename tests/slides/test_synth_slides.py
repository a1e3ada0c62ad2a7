"""Slides made by `histokd synth` read back through both backends, tile, and line up with their tumour masks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histokd.data.cohort import read_cohort
from histokd.slides.masks import load_mask, tile_fractions
from histokd.slides.reader import open_slide
from histokd.pipeline.tile import tile
from histokd.slides.tiling import read_tiles

import histokd.synth.generate as synth_mod


@pytest.fixture(scope="module")
def synth_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return synth_mod.synth(out, slides=2, seed=3, size=1024, workers=1, show_progress=False)


def test_generated_slides_read_tile_and_align(synth_cohort, tmp_path):
    co = read_cohort(synth_cohort)
    for row in co.rows():
        meta = json.loads((synth_cohort.parent / "meta" / f"{row['slide_id']}.json").read_text())
        views = {}
        for backend in ("openslide", "tiffslide"):
            with open_slide(row["path"], backend=backend) as s:
                assert s.mpp == pytest.approx(meta["mpp"]) and s.level_count >= 3
                assert list(s.dimensions) == list(meta["size"])
                views[backend] = [s.read_region((256, 256), lvl, (64, 64)).astype(int) for lvl in (0, 1)]
        for a, b in zip(views["openslide"], views["tiffslide"]):
            assert np.abs(a - b).mean() < 3
        with open_slide(row["paired_path"]) as p:
            assert p.backend == "tiffslide" and p.channels == len(meta["paired_channels"]) > 1
            assert p.read_region_channels(256, 256, 32, 1.0).shape == (32, 32, p.channels)
    res = tile(co, tmp_path / "run", mpp=0.5, size=64, workers=1)
    assert res.ok, res.failures
    for row in co.rows():
        g = read_tiles(tmp_path / "run" / "tiles" / f"{row['slide_id']}.h5")
        assert len(g) > 10
        mask, ds = load_mask(row["mask_path"], tuple(g.attrs["slide_dimensions"]))
        frac = tile_fractions(mask, ds, g.coords, g.attrs["patch_size_level0"])
        if row["label"] == "tumour":
            assert frac.max() > 0.5  # the lesion is tiled
        else:
            assert frac.max() == 0
