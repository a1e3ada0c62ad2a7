"""Pseudo-masks: tiles painted at the working resolution and read back; segmentation nets' shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histokd.models.segnet import build_segnet
from histokd.segmentation.pseudo import tile_map, tile_means
from histokd.segmentation.regions import predict_map, sample_regions


def test_tile_map_paints_and_averages():
    # two 8-px level-0 tiles at downsample 4 -> 2x2 map px each; they overlap by half a tile
    coords = np.array([[0, 0], [4, 0]])
    m, cov = tile_map(np.array([1.0, 0.0]), coords, 8, (4, 4), 4.0)
    assert m[0, 0] == 1.0 and m[0, 1] == pytest.approx(0.5) and m[0, 2] == 0.0
    assert cov[:2, :3].all() and not cov[2:].any() and not cov[:, 3].any()
    # fractional overlap: a tile at x=2 covers half of map column 0
    m2, _ = tile_map(np.array([1.0, 0.0]), np.array([[2, 0], [8, 0]]), 6, (2, 4), 4.0)
    assert m2[0, 0] == 1.0 and m2[0, 1] == 1.0 and m2[0, 2] == 0.0
    back = tile_means(m, coords, 8, 4.0)
    assert back[0] == pytest.approx(0.75) and back[1] == pytest.approx(0.25)


@pytest.mark.parametrize("name", ["sidenet", "unet"])
def test_segnets_shapes_and_windowed_inference(name):
    torch.manual_seed(0)
    net = build_segnet(name, (4, 8, 8))
    out = net(torch.randn(2, 3, 32, 32))
    assert out.fused.shape == (2, 1, 32, 32)
    assert ((out.fused > 0) & (out.fused < 1)).all()
    img = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    whole = predict_map(net, img, window=512)
    tiled = predict_map(net, img, window=32, overlap=8)
    assert whole.shape == (70, 90) and tiled.shape == (70, 90)
    # windows keep their centres: interior agrees with whole-image inference up to the receptive field
    assert np.abs(whole - tiled)[20:50, 20:70].mean() < 0.05


def test_sample_regions_shapes():
    from histokd.segmentation.regions import SlideImage

    img = np.full((24, 40, 3), 200, np.uint8)
    s = SlideImage("a", img, np.zeros((24, 40), np.float32), 1, None, np.ones((24, 40), bool), (4.0, 4.0))
    imgs, tgts = sample_regions([s], 3, 32, np.random.default_rng(0))
    assert imgs.shape == (3, 32, 32, 3) and tgts.shape == (3, 32, 32)
    assert imgs.dtype == np.uint8 and tgts.dtype == np.float32
