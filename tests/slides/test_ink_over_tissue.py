"""Pen ink over tissue is excluded from the tissue mask: a synthetic slide (camelyon stain, 1 mm at
0.5 µm/px) with a 100 µm stroke across its tissue, each ink colour at opacity 0.4 and 1.0, against the
generator's truth (tissue not under ink)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from histokd.slides.tissue import TissueParams, tissue_from_rgb
from histokd.synth.layout import INK_COLOURS, Pen, make_layout
from histokd.synth.params import resolve_params
from histokd.synth.render import render

SIZE, MPP, DS = 2048, 0.5, 4  # detection thumbnail: 2 µm/px, as detect_tissue reads this slide


@pytest.fixture(scope="module")
def base():
    p = resolve_params("camelyon", {"pen_prob": 0.0}, size=SIZE)
    lay = make_layout(p, MPP, True, np.random.default_rng([21, 0]))
    yy, xx = np.nonzero(lay.tissue_mask(16))
    cy, cx = (yy.mean() + 0.5) * 16, (xx.mean() + 0.5) * 16
    pts = tuple((cx + s * math.cos(0.5), cy + s * math.sin(0.5)) for s in np.linspace(-600, 600, 30))
    return p, lay, pts


@pytest.mark.parametrize("opacity", [0.4, 1.0])
@pytest.mark.parametrize("colour", INK_COLOURS)
def test_ink_over_tissue_is_not_tissue(base, colour: str, opacity: float) -> None:
    p, lay, pts = base
    lay.ink = [Pen(pts, 100.0 / MPP, colour, opacity)]
    rgb = render(p, lay, np.random.default_rng([21, 1])).rgb
    n = SIZE // DS
    thumb = rgb.reshape(n, DS, n, DS, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    tissue, ink = lay.tissue_mask(DS), lay.ink_mask(DS)
    under = tissue & ink
    assert under.sum() > 0.1 * tissue.sum()  # the stroke covers a good part of the tissue
    found, _ = tissue_from_rgb(thumb, MPP * DS, TissueParams(ink_od=True, pen_dilate_um=12.0))
    clean = tissue & ~ink
    assert abs(found.mean() - clean.mean()) <= 0.05 * clean.mean()
    assert (found & under).sum() <= 0.15 * under.sum()  # ink-covered tissue left out (0.4: up to ~10 % kept)
    assert (found & clean).sum() >= 0.95 * clean.sum()


def test_the_ink_rule_off_keeps_the_resume_key_of_older_grids():
    """Grids tiled before the optical-density ink rule existed still resume: its settings are not in the stored
    tissue settings while it is off."""
    from histokd.slides.tissue import TissueParams

    off = TissueParams().to_dict()
    assert not [k for k in off if k.startswith("ink_")]
    on = TissueParams(ink_od=True).to_dict()
    assert on["ink_od"] is True and "ink_weights" in on


def test_slide_stain_vectors_recover_a_drifted_hematoxylin() -> None:
    import numpy as np

    from histokd.slides.tissue import _E_OD, slide_stain_vectors

    rng = np.random.default_rng(0)
    h = np.array([0.68, 0.67, 0.30])  # drifted towards R = G: out of the reference plane
    h /= np.linalg.norm(h)
    e = _E_OD / np.linalg.norm(_E_OD)
    c = rng.uniform(0, 1.5, (5000, 2))
    od = c[:, :1] * h + c[:, 1:] * e + rng.normal(0, 0.01, (5000, 3))
    got = slide_stain_vectors(od)
    assert got is not None
    assert float(got[0] @ h) > 0.999 and float(got[1] @ e) > 0.999
    assert slide_stain_vectors(od[:50]) is None  # too few pixels


def test_new_ink_settings_leave_the_resume_key_alone_while_the_rule_is_off() -> None:
    from histokd.slides.tissue import TissueParams

    d = TissueParams().to_dict()
    assert not any(k.startswith("ink_") for k in d)
    assert {"ink_slide_plane", "ink_seed_score", "ink_grow_um"} <= set(TissueParams(ink_od=True).to_dict())
