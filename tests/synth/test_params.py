"""Presets, overrides and the burden they produce."""

from __future__ import annotations

import numpy as np
import pytest

from histokd.errors import InputError
from histokd.synth.layout import make_layout
from histokd.synth.nuclei import nucleus_types
from histokd.synth.params import PRESETS, SynthParams, parse_override, resolve_params


def test_presets_are_parameter_sets_with_overrides() -> None:
    assert set(PRESETS.names()) == {"easy", "camelyon", "hard"}
    p = resolve_params("hard", {"lesion_count": [1, 1]}, atypia=0.2)
    assert isinstance(p, SynthParams) and p.lesion_count == (1, 1) and p.atypia == 0.2
    assert p.stain_spread == PRESETS.get("hard").stain_spread
    with pytest.raises(InputError, match="atypia"):
        resolve_params("easy", atypia=1.5)
    with pytest.raises(InputError, match="unknown"):
        resolve_params("easy", {"lesions": 3})
    assert parse_override("lesion_radius_um=20,40") == ("lesion_radius_um", (20.0, 40.0))
    assert parse_override("atypia=0.3") == ("atypia", 0.3)
    with pytest.raises(InputError):
        parse_override("atypia")


def _burden(preset: str, n: int = 12) -> np.ndarray:
    p = resolve_params(preset)
    return np.array([make_layout(p, p.mpps[i % 2], True, np.random.default_rng([5, i])).tumour_fraction(16)
                     for i in range(n)])


def test_presets_differ_in_lesion_burden_as_documented() -> None:
    easy, cam, hard = _burden("easy"), _burden("camelyon"), _burden("hard")
    assert np.median(easy) > 0.2  # large regions
    # hard is hard by look-alikes, not by burden: enough tumour tiles that MIL learns the slides
    assert 0.1 < np.median(hard) and (hard > 0.02).all()
    assert np.median(easy) > np.median(hard) > np.median(cam)  # camelyon keeps the micro-metastases
    assert hard.max() <= PRESETS.get("hard").max_tumour_fraction + 0.01
    assert PRESETS.get("hard").lookalike_mimicry > 0 and PRESETS.get("hard").lookalike_rate >= 2
    assert (easy > 0).all() and (hard > 0).all()


def test_atypia_changes_tumour_nuclei_in_physical_units() -> None:
    strong = nucleus_types(resolve_params("easy"))
    weak = nucleus_types(resolve_params("hard"))
    assert 6.0 <= strong["normal"].diameter_um[0] <= 8.0
    assert 10.0 <= strong["tumour"].diameter_um[0] <= 16.0
    assert weak["normal"].diameter_um[0] < weak["tumour"].diameter_um[0] < strong["tumour"].diameter_um[0]
    assert strong["tumour"].darkness > weak["tumour"].darkness > strong["normal"].darkness
    assert strong["tumour"].irregularity > weak["tumour"].irregularity


def test_negative_layout_has_no_lesions_but_has_confounders() -> None:
    p = resolve_params("hard", pen_prob=1.0, fold_prob=1.0, blur_prob=1.0)
    lay = make_layout(p, 0.5, False, np.random.default_rng(0))
    assert lay.lesions == [] and lay.tumour_fraction() == 0.0
    assert lay.lymph and lay.pen is not None and lay.fold is not None and lay.blurs


def test_lookalike_mimicry_moves_coarse_cues_only() -> None:
    base = nucleus_types(resolve_params("camelyon", lookalike_mimicry=0.0))
    full = nucleus_types(resolve_params("camelyon", lookalike_mimicry=1.0))
    half = nucleus_types(resolve_params("camelyon", lookalike_mimicry=0.5))
    tum = full["tumour"]
    assert base["tumour"] == tum  # mimicry never changes the tumour
    assert full["lookalike"].diameter_um[0] == pytest.approx(tum.diameter_um[0])
    assert full["lookalike"].darkness == pytest.approx(tum.darkness)
    assert full["lookalike"].density == pytest.approx(tum.density)
    assert base["lookalike"].diameter_um[0] < half["lookalike"].diameter_um[0] < tum.diameter_um[0]
    for k in ("irregularity", "chromatin", "vesicular", "nucleoli", "expression"):  # benign cues stay
        assert getattr(full["lookalike"], k) == getattr(base["lookalike"], k), k
    with pytest.raises(InputError):
        resolve_params("easy", lookalike_mimicry=1.5)


def test_subtle_lesions_after_the_first_at_their_own_grade() -> None:
    p = resolve_params("camelyon", subtle_fraction=1.0, subtle_atypia=0.1, lesion_count=(3, 3))
    lay = make_layout(p, 0.5, True, np.random.default_rng(3))
    kinds = [b.kind for b in lay.lesions]
    assert kinds[0] == "tumour" and set(kinds[1:]) == {"subtle"} and len(kinds) >= 2
    types = nucleus_types(p)
    assert types["normal"].diameter_um[0] < types["subtle"].diameter_um[0] < types["tumour"].diameter_um[0]
    assert "subtle" not in nucleus_types(resolve_params("camelyon"))  # other presets draw as before
    mask = lay.tumour_mask(16)
    sub = [b for b in lay.lesions if b.kind == "subtle"][0]
    assert mask[int(sub.cy // 16), int(sub.cx // 16)]  # subtle lesions are tumour in the ground truth
