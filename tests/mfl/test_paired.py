"""Paired tiles are pixel-aligned: the planted marker is at the same place in the H&E and dense tiles."""

from __future__ import annotations

import numpy as np
import pytest

from histokd.data.paired import parse_affine, read_dense_tile
from histokd.errors import InputError
from histokd.slides.reader import open_slide


def _pair(paired_files, key, affine, x0, y0, size, mpp):
    with open_slide(paired_files["he"]) as he, open_slide(paired_files[key]) as dense:
        he_tile = he.read_region_mpp(x0, y0, size, mpp)
        dense_tile = read_dense_tile(dense, x0, y0, size, mpp, he.mpp, parse_affine(affine))
    return he_tile, dense_tile


@pytest.mark.parametrize(
    "key,affine",
    [
        ("dense", None),  # synthetic cohort: identity
        ("dense_shift", "1,0,40,0,1,24"),  # translation: direct read
        ("dense_transposed", "0,1,0,1,0,0"),  # a reflection: resampled path
        ("dense_x2", "2,0,0,0,2,0"),  # paired slide at twice the resolution
    ],
)
@pytest.mark.parametrize("mpp,size", [(0.5, 64), (1.0, 48)])
def test_marker_at_same_position(paired_files, marker, key, affine, mpp, size):
    # put the marker off-centre in the tile so that a flip or transpose would be caught
    x0, y0 = marker["x"] - 10, marker["y"] - 20
    he_tile, dense_tile = _pair(paired_files, key, affine, x0, y0, size, mpp)
    assert he_tile.shape == (size, size, 3)
    assert dense_tile.shape == (size, size, 4)
    box_he = marker["box"](he_tile, 0, 120)  # the marker is dark in red
    box_dense = marker["box"](dense_tile, marker["channel"], 120)
    assert box_he == box_dense
    s = mpp / marker["mpp"]
    expected = (round(20 / s), round((20 + marker["h"]) / s) - 1, round(10 / s), round((10 + marker["w"]) / s) - 1)
    assert box_he == expected


def test_identity_pair_is_exact(paired_files, marker):
    """Identity at the slide's own resolution: the dense tile is exactly the stored pixels."""
    from histokd.slides.reader import open_slide

    x0, y0 = 280, 190
    _, dense_tile = _pair(paired_files, "dense", "", x0, y0, 32, 0.5)
    with open_slide(paired_files["dense"]) as d:
        raw = d.read_region_channels(x0, y0, 32, 0.5)
    np.testing.assert_array_equal(dense_tile, raw)
    assert dense_tile[15, 25, marker["channel"]] == 250  # inside the marker
    assert dense_tile[0, 0, marker["channel"]] < 20  # outside


@pytest.mark.parametrize("bad", ["1,2,3", "a,b,c,d,e,f", "0,0,0,0,0,0", "1,0,0,0,1,nan"])
def test_bad_affine_is_rejected(bad):
    with pytest.raises(InputError, match="paired_affine"):
        parse_affine(bad)


def test_affine_parsing():
    np.testing.assert_allclose(parse_affine(None), np.eye(2, 3))
    np.testing.assert_allclose(parse_affine(float("nan")), np.eye(2, 3))
    np.testing.assert_allclose(parse_affine("1, 0, 5, 0, 1, -3"), [[1, 0, 5], [0, 1, -3]])
