"""The IFKD loop: fusion arithmetic, role swaps, negatives clamped, a short real run."""

from __future__ import annotations

import numpy as np
import pytest

import histokd.methods.ifkd_core as core
from histokd.methods.ifkd_core import LoopSettings, calibrate, clamp_negatives, make_scorer, run_ifkd, should_swap


def test_should_swap_strictly_better():
    assert should_swap(0.61, 0.60)
    assert not should_swap(0.60, 0.60)
    assert not should_swap(0.59, 0.60)
    assert not should_swap(float("nan"), 0.5)
    assert should_swap(0.1, float("nan"))


def _scripted(monkeypatch, scores, student_maps):
    """Replace training by a recorder, the student's maps by ``student_maps[k]`` and the scorer by a script."""
    seen_targets: list[list[np.ndarray]] = []

    def fake_train(net, opt, slides, cfg, rng, desc):
        seen_targets.append([s.target.copy() for s in slides])
        return 0.0, cfg.epochs_per_round

    calls = iter(scores)
    monkeypatch.setattr(core, "_train_round", fake_train)
    rounds = iter(student_maps)
    state = {"calls": 0, "cur": 0.0}

    def fake_maps(net, slides, window):
        # run_ifkd asks for the train maps, then the val maps, once per round: a new value every 2 calls
        if state["calls"] % 2 == 0:
            state["cur"] = next(rounds)
        state["calls"] += 1
        return [np.full(s.target.shape, state["cur"], np.float32) for s in slides]

    monkeypatch.setattr(core, "_maps", fake_maps)
    monkeypatch.setattr(core, "make_scorer", lambda val, mil: (lambda maps, **k: next(calls), "scripted"))
    return seen_targets


def test_fusion_and_swaps_follow_validation(monkeypatch, mem_slides):
    train, val = mem_slides
    mil = [s.target.copy() for s in train]
    # teacher (MIL) val score 0.5; students: 0.4 (no swap), 0.7 (swap), 0.7 (tie: no swap), 0.8 (swap)
    seen = _scripted(monkeypatch, [0.5, 0.4, 0.7, 0.7, 0.8], [0.2, 0.6, 0.9, 0.3])
    cfg = LoopSettings(rounds=4, epochs_per_round=1, teacher_weight=0.75, widths=(4, 4, 4))
    res = run_ifkd(train, val, cfg)
    assert [h.swapped for h in res.history] == [False, True, False, True]
    assert [h.teacher for h in res.history] == ["mil", "mil", "student_round2", "student_round2"]
    assert res.source == "student_round4" and res.val_score == 0.8 and res.mil_val_score == 0.5
    pos = [i for i, s in enumerate(train) if s.label == 1]
    neg = [i for i, s in enumerate(train) if s.label == 0]
    # round 1 trains on the MIL maps (negatives zeroed)
    for i in pos:
        np.testing.assert_allclose(seen[0][i], mil[i])
    for i in neg:
        assert not seen[0][i].any()
    # round 2: no swap -> 0.75 * MIL + 0.25 * student(0.2)
    for i in pos:
        np.testing.assert_allclose(seen[1][i], 0.75 * mil[i] + 0.25 * 0.2, rtol=1e-6)
    # round 3: swap after round 2 -> teacher = student(0.6), student role = old teacher (MIL)
    for i in pos:
        np.testing.assert_allclose(seen[2][i], 0.75 * 0.6 + 0.25 * mil[i], rtol=1e-6)
    # round 4: no swap -> teacher still student(0.6), student = round-3 maps (0.9)
    for i in pos:
        np.testing.assert_allclose(seen[3][i], 0.75 * 0.6 + 0.25 * 0.9, rtol=1e-6)
    for k in range(4):
        for i in neg:
            assert not seen[k][i].any()


def test_no_swap_returns_best_student(monkeypatch, mem_slides):
    train, val = mem_slides
    _scripted(monkeypatch, [0.9, 0.3, 0.5], [0.1, 0.2])
    res = run_ifkd(train, val, LoopSettings(rounds=2, epochs_per_round=1, widths=(4, 4, 4)))
    assert not any(h.swapped for h in res.history)
    assert res.source == "student_round2" and res.val_score == 0.5


def test_clamp_negatives(mem_slides):
    train, _ = mem_slides
    maps = [np.full(s.target.shape, 0.7, np.float32) for s in train]
    out = clamp_negatives(maps, train)
    for m, s in zip(out, train):
        assert (m == (0.0 if s.label == 0 else 0.7)).all()


def test_scorer_uses_gt_then_pseudo(mem_slides):
    _, val = mem_slides
    score, name = make_scorer(val, [s.target for s in val])
    assert name == "val_dice_gt"
    assert score([s.gt.astype(np.float32) for s in val]) == 1.0
    no_gt = [type(s)(s.slide_id, s.image, s.target, s.label, None, s.tissue, s.downsample) for s in val]
    score2, name2 = make_scorer(no_gt, [s.target for s in no_gt])
    assert name2 == "val_dice_pseudo"
    perfect = [(s.target > 0.5).astype(np.float32) if s.label else np.zeros_like(s.target) for s in no_gt]
    assert score2(perfect) == 1.0
    sg, t, v = calibrate([s.gt.astype(np.float32) for s in val], val, [s.target for s in val])
    assert v == 1.0 and 0.1 <= t <= 0.9


@pytest.mark.timeout(120)
def test_short_real_run_learns(mem_slides):
    """Two short rounds on in-memory slides: the student's maps beat chance on validation."""
    train, val = mem_slides
    cfg = LoopSettings(rounds=2, epochs_per_round=3, regions_per_slide=4, region_size=32, batch_size=8,
                       widths=(8, 8, 16), lr=3e-3, seed=1)
    res = run_ifkd(train, val, cfg)
    assert len(res.history) == 2 and len(res.round_states) == 2
    assert np.isfinite(res.history[-1].train_loss)
    assert res.val_score > 0.3  # tumour blobs are darker: even a short run finds them
