"""Masks: PNG / GeoJSON loading and exact tile coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from histokd.errors import InputError
from histokd.slides.masks import load_mask, tile_fractions


def test_png_mask_downsample_and_aspect(tmp_path):
    m = np.zeros((50, 80), np.uint8)
    m[10:20, 30:60] = 255
    p = tmp_path / "m.png"
    Image.fromarray(m).save(p)
    mask, ds = load_mask(p, (1600, 1000))
    assert ds == 20.0 and mask.dtype == bool and mask.sum() == 300
    with pytest.raises(InputError, match="aspect differs"):
        load_mask(p, (1600, 2000))
    with pytest.raises(InputError, match="not found"):
        load_mask(tmp_path / "none.png", (10, 10))
    with pytest.raises(InputError, match="unsupported mask format"):
        (tmp_path / "m.foo").write_text("x")
        load_mask(tmp_path / "m.foo", (10, 10))


def test_geojson_polygon_with_hole_and_class_filter(tmp_path):
    outer = [[100, 100], [900, 100], [900, 900], [100, 900], [100, 100]]
    hole = [[300, 300], [700, 300], [700, 700], [300, 700], [300, 300]]
    other = [[1000, 0], [1200, 0], [1200, 200], [1000, 200], [1000, 0]]
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": "Polygon", "coordinates": [outer, hole]}},
        {"type": "Feature", "properties": {"classification": {"name": "Other"}},
         "geometry": {"type": "MultiPolygon", "coordinates": [[other]]}},
    ]}
    p = tmp_path / "a.geojson"
    p.write_text(json.dumps(fc))
    mask, ds = load_mask(p, (1600, 1000), downsample=10)
    assert ds == 10 and mask.shape == (100, 160)
    assert mask.sum() == pytest.approx((80 * 80 - 40 * 40) + 20 * 20, abs=60)
    assert not mask[50, 50] and mask[20, 20] and mask[10, 110]
    tum, _ = load_mask(p, (1600, 1000), downsample=10, classes=["tumor"])
    assert not tum[10, 110] and tum[20, 20]


def test_tile_fractions_exact_coverage():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # left half, ds = 4 -> level-0 x < 20
    coords = np.array([[0, 0], [10, 0], [20, 0], [16, 8], [36, 36], [38, 0]])
    f = tile_fractions(mask, 4.0, coords, 8.0)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, [1.0, 1.0, 0.0, 0.5, 0.0, 0.0], atol=1e-6)
    # fractional straddle: tile [18, 24) covers 2 of 6 px
    np.testing.assert_allclose(tile_fractions(mask, 4.0, np.array([[18, 0]]), 6.0), [2 / 6], atol=1e-6)
    # partly outside the mask's extent counts as uncovered
    full = np.ones((10, 10), bool)
    np.testing.assert_allclose(tile_fractions(full, 4.0, np.array([[36, 0]]), 8.0), [0.5], atol=1e-6)
    assert tile_fractions(mask, 4.0, np.zeros((0, 2)), 8.0).shape == (0,)


def test_tile_fractions_match_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((40, 50)) > 0.6
    ds, ps = 3.0, 7.5
    coords = rng.integers(0, 140, size=(50, 2))
    got = tile_fractions(mask, ds, coords, ps)
    up = np.repeat(np.repeat(mask, 6, 0), 6, 1)  # 0.5 level-0 px per pixel (ds 3 -> 6 sub px)
    for (x, y), g in zip(coords, got):
        sub = up[int(y * 2) : int((y + ps) * 2), int(x * 2) : int((x + ps) * 2)]
        want = sub.sum() / (ps * 2) ** 2
        assert g == pytest.approx(want, abs=1e-5)
