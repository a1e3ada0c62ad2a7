"""Pen ink across the tissue (SynthParams.pen_over_tissue): off, every cohort draws what it drew before the
knob existed; on, the same slide plus ink, with the ink's area in the metadata."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from histokd.synth.generate import _config_hash, generate_cohort, plan_cohort
from histokd.synth.layout import INK_COLOURS, make_layout
from histokd.synth.params import resolve_params
from histokd.synth.render import render

# sha256[:16] of rgb + paired bytes, computed at the commit before the knob (e2ecbe6), pen_prob=1, size 768,
# default_rng([17, i]); slide 0 positive at 0.5 µm/px, slide 1 negative at 0.25 µm/px
BEFORE_KNOB = {
    ("easy", 0): "baca5ec9fc926e6c", ("easy", 1): "06e85e6ac370c737",
    ("camelyon", 0): "5adac3b694fe20b7", ("camelyon", 1): "955050d874a83be4",
    ("hard", 0): "9f7ecff697242570", ("hard", 1): "bbf6bbc0c47cc92b",
}


def _draw(preset: str, i: int, **over):
    p = resolve_params(preset, {"pen_prob": 1.0, **over}, size=768)
    rng = np.random.default_rng([17, i])
    lay = make_layout(p, (0.5, 0.25)[i], i == 0, rng)
    return lay, render(p, lay, rng)


@pytest.mark.parametrize("preset,i", sorted(BEFORE_KNOB))
def test_knob_off_draws_the_same_pixels_as_before(preset: str, i: int) -> None:
    lay, d = _draw(preset, i)
    assert lay.ink == []
    assert hashlib.sha256(d.rgb.tobytes() + d.paired.tobytes()).hexdigest()[:16] == BEFORE_KNOB[(preset, i)]


def test_knob_on_is_the_same_slide_plus_ink() -> None:
    lay0, d0 = _draw("camelyon", 0)
    lay1, d1 = _draw("camelyon", 0, pen_over_tissue=1.0)
    assert lay1.ink and lay1.pen == lay0.pen and lay1.lesions == lay0.lesions
    for q in lay1.ink:
        assert q.colour in INK_COLOURS and 0.4 <= q.opacity <= 1.0
    assert np.array_equal(d0.paired, d1.paired)  # ink is on the glass, not in the multiplex image
    changed = np.any(d0.rgb != d1.rgb, axis=-1)
    assert changed.any()
    # pixels change only near the ink (its one-cell soft edge and the coarse grid's bilinear reach)
    near = np.repeat(np.repeat(lay1.ink_mask(16), 16, 0), 16, 1)
    from scipy import ndimage as ndi

    near = ndi.binary_dilation(near, iterations=3 * lay1.step)
    assert not (changed & ~near).any()


def test_config_hash_unchanged_without_the_knob() -> None:
    p = resolve_params("camelyon")
    spec = plan_cohort(2, 0, p)[0]
    from dataclasses import asdict

    old = {k: v for k, v in p.to_dict().items() if k != "pen_over_tissue"}
    blob = json.dumps({"params": old, "spec": asdict(spec), "mask_ds": 16}, sort_keys=True)
    assert _config_hash(p, spec, 16) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert _config_hash(resolve_params("camelyon", pen_over_tissue=0.5), spec, 16) != _config_hash(p, spec, 16)


def test_ink_truth_in_meta(tmp_path) -> None:
    res = generate_cohort(tmp_path / "c", slides=2, seed=4, preset="camelyon", size=1024, workers=1,
                          overrides={"pen_prob": 1.0, "pen_over_tissue": 1.0}, show_progress=False)
    assert not res.failures
    for r in res.rows:
        m = json.loads((tmp_path / "c" / "meta" / f"{r['slide_id']}.json").read_text())
        over = m["confounders"]["pen_over_tissue"]
        assert over and all(q["colour"] in INK_COLOURS and 0.4 <= q["opacity"] <= 1 for q in over)
        assert m["ink_fraction_of_slide"] > 0 and 0 < m["ink_over_tissue_fraction"] < 1
        t, c = m["tissue_fraction_of_slide"], m["clean_tissue_fraction_of_slide"]
        assert c == pytest.approx(t * (1 - m["ink_over_tissue_fraction"]), rel=1e-6)
    res = generate_cohort(tmp_path / "d", slides=1, seed=4, preset="camelyon", size=1024, workers=1,
                          overrides={"pen_prob": 0.0}, show_progress=False)
    m = json.loads((tmp_path / "d" / "meta" / f"{res.rows[0]['slide_id']}.json").read_text())
    assert m["confounders"]["pen_over_tissue"] == [] and m["ink_fraction_of_slide"] == 0
    assert m["clean_tissue_fraction_of_slide"] == m["tissue_fraction_of_slide"]
