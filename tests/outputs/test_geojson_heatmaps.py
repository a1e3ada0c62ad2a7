"""Tile GeoJSON (QuPath layout, merged regions), heatmap painting, plots."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import shape

from histokd.evaluate.binary import expected_calibration_error
from histokd.outputs.geojson import prediction_geojson, tile_regions
from histokd.outputs.heatmaps import Overlay, render_heatmap, resample_mask, tile_value_grid
from histokd.outputs.plots import plot_calibration, plot_confusion, plot_pr, plot_roc


def test_regions_merge_adjacent_tiles_and_keep_holes():
    # a 3x3 block of tiles with the centre tile below threshold -> one square ring with a hole
    coords = np.array([[x, y] for y in (0, 100, 200) for x in (0, 100, 200)])
    p = np.full(9, 0.9)
    p[4] = 0.1
    regions = tile_regions(coords, 100, p, 0.5)
    assert len(regions) == 1
    assert regions[0].area == pytest.approx(8 * 100 * 100) and len(regions[0].interiors) == 1
    gj = prediction_geojson(coords, 100, np.column_stack([1 - p, p]), ["normal", "tumour"], 0.5, slide_id="s")
    ann = [f for f in gj["features"] if f["properties"]["objectType"] == "annotation"]
    assert len(ann) == 1 and shape(ann[0]["geometry"]).is_valid
    assert ann[0]["properties"]["measurements"]["n_tiles"] == 8
    assert ann[0]["properties"]["measurements"]["mean_prob"] == pytest.approx(0.9)
    tiles = [f for f in gj["features"] if f["properties"]["objectType"] == "tile"]
    assert [t["properties"]["classification"]["name"] for t in tiles].count("Normal") == 1
    assert gj["properties"]["slide_id"] == "s"


def test_tile_value_grid_paints_max_of_overlaps():
    coords = np.array([[0, 0], [50, 0]])
    grid = tile_value_grid(coords, 100, np.array([0.2, 0.7]), (10, 20), (10.0, 10.0))
    assert grid[0, 0] == pytest.approx(0.2)
    assert grid[0, 7] == pytest.approx(0.7)  # overlap of both tiles: the max
    assert np.isnan(grid[0, 19]) and np.isnan(grid[9, 19])


def test_resample_mask_nearest():
    m = np.zeros((4, 4), bool)
    m[:2, :2] = True
    r = resample_mask(m, 10.0, (8, 8), (5.0, 5.0))
    assert r[:4, :4].all() and not r[4:, :].any()


def test_render_heatmap_png_with_overlays():
    thumb = np.full((60, 80, 3), 230, np.uint8)
    coords = np.array([[0, 0], [100, 0]])
    gt = Overlay(np.ones((6, 8), bool), 100.0)
    png = render_heatmap(thumb, (800, 600), coords, 100, np.array([0.1, 0.9]), ground_truth=gt, title="x $y$")
    one = Image.open(io.BytesIO(png))
    two = Image.open(io.BytesIO(render_heatmap(thumb, (800, 600), coords, 100, np.array([0.1, 0.9]),
                                               pixel_mask=Overlay(np.ones((3, 4), np.uint8), 200.0))))
    assert one.format == "PNG" and two.size[0] > 1.5 * one.size[0]


def test_plots_render_and_ece():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.clip(y * 0.5 + rng.random(200) * 0.5, 0, 1)
    for png in (plot_roc({"a$b": (y, s), "one class": (np.ones(5), np.ones(5))}), plot_pr({"a": (y, s)}),
                plot_calibration({"a": (y, s)}), plot_confusion(np.array([[3, 1], [0, 4]]), ["n", "t"])):
        assert Image.open(io.BytesIO(png)).format == "PNG"
    p = rng.random(5000)
    assert expected_calibration_error((rng.random(5000) < p).astype(int), p) < 0.03
    assert expected_calibration_error(np.zeros(100), np.full(100, 0.9)) == pytest.approx(0.9)


def test_render_heatmap_never_parses_user_text_as_mathtext():
    thumb = np.full((60, 80, 3), 230, np.uint8)
    coords = np.array([[0, 0], [100, 0]])
    # invalid mathtext: matplotlib raised a ValueError when it parsed these
    png = render_heatmap(thumb, (800, 600), coords, 100, np.array([0.1, 0.9]), title=r"slide $\frac{$ tumour $x",
                         label=r"p($\notacommand$)")
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_low_probabilities_are_transparent_and_the_colour_bar_says_so(monkeypatch):
    """A tile at probability 0.02 leaves the tissue under it as it is; one at 0.95 is coloured; one at 0.3 is
    in between. The colour bar's label names the transparency."""
    from histokd.outputs import plots
    from histokd.outputs.heatmaps import FADE, fade_alpha, faded_colormap

    assert fade_alpha(np.array([0.0, FADE[0], (FADE[0] + FADE[1]) / 2, FADE[1], 1.0]), 0.8).tolist() == \
        pytest.approx([0.0, 0.0, 0.4, 0.8, 0.8])
    cm = faded_colormap("inferno", 0.8)
    assert cm(0.0)[3] == 0.0 and cm(1.0)[3] == pytest.approx(0.8)
    texts: list[str] = []
    real = plots.text_safe
    monkeypatch.setattr(plots, "text_safe", lambda t: texts.append(t) or real(t))
    tissue = (60, 160, 90)  # a colour no inferno entry has
    thumb = np.zeros((100, 300, 3), np.uint8)
    thumb[:] = tissue
    coords = np.array([[0, 0], [1000, 0], [2000, 0]])
    png = render_heatmap(thumb, (3000, 1000), coords, 1000, np.array([0.02, 0.3, 0.95]), dpi=100)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    untouched = np.where((np.abs(img - np.array(tissue)).sum(axis=2) < 8).any(axis=0))[0]
    panel = np.where((np.abs(img - 255).sum(axis=2) > 30).any(axis=0))[0]
    x0, x1 = panel.min(), panel.max()
    # the tissue shows through untouched under the 0.02 tile (left third of the panel) and nowhere else
    assert len(untouched) > 0 and untouched.max() < x0 + (x1 - x0) * 0.45
    assert any("transparent below 0.1" in t for t in texts)
