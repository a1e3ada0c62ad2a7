from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2lab

from histokd.errors import InputError
from histokd.features.stain import Macenko, Reinhard, build_stain_normalizer




def test_reinhard_matches_target_statistics(make_he):
    he_image = make_he
    src = he_image(128, 128, 3)
    ref = (he_image(128, 128, 4).astype(np.int16) + (-30, 10, -20)).clip(0, 255).astype(np.uint8)
    out = Reinhard().fit(ref)(src)
    assert out.shape == src.shape and out.dtype == np.uint8
    lab_o, lab_r = rgb2lab(out), rgb2lab(ref)
    tis_o, tis_r = lab_o[lab_o[..., 0] < 90], lab_r[lab_r[..., 0] < 90]
    np.testing.assert_allclose(tis_o.mean(0), tis_r.mean(0), atol=3.0)


def test_macenko_normalises_and_leaves_background(make_he):
    he_image = make_he
    tile = he_image(128, 128, 5)
    m = Macenko()
    out = m(tile)
    assert out.shape == tile.shape and out.dtype == np.uint8
    assert not np.array_equal(out, tile)
    white = np.full((64, 64, 3), 250, np.uint8)
    np.testing.assert_array_equal(m(white), white)
    # normalising an image towards itself changes it only slightly
    ref = he_image(128, 128, 6)
    assert np.abs(Macenko().fit(ref)(ref).astype(int) - ref).mean() < 8


def test_unknown_stain_norm():
    assert build_stain_normalizer(None) is None and build_stain_normalizer("none") is None
    with pytest.raises(InputError, match="macenko"):
        build_stain_normalizer("vahadane")
