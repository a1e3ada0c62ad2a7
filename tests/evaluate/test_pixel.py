"""Pixel metrics and FROC against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from histokd.evaluate.pixel import (
    Detection,
    detect_lesions,
    dice,
    froc,
    hausdorff,
    iou,
    pixel_auc,
    segmentation_scores,
    summarise_slides,
)


def _box(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_dice_iou_hand_computed():
    gt = _box((10, 10), 0, 4, 0, 4)  # 16 px
    pred = _box((10, 10), 2, 6, 0, 4)  # 16 px, overlap 8 px
    assert dice(pred, gt) == pytest.approx(2 * 8 / 32)
    assert iou(pred, gt) == pytest.approx(8 / 24)
    assert dice(gt, gt) == 1.0 and iou(gt, gt) == 1.0
    empty = np.zeros_like(gt)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(pred, empty) == 0.0 and iou(empty, gt) == 0.0


def test_hausdorff_hand_computed():
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[5, 5] = True
    b[5, 5] = True
    b[8, 9] = True  # 3-4-5 triangle: the far point of B is 5 px from A
    assert hausdorff(a, b) == pytest.approx(5.0)
    assert hausdorff(b, a) == pytest.approx(5.0)
    assert hausdorff(a, b, spacing=8.0) == pytest.approx(40.0)
    assert hausdorff(a, a) == 0.0
    assert hausdorff(np.zeros_like(a), np.zeros_like(a)) == 0.0
    assert math.isinf(hausdorff(a, np.zeros_like(a)))
    # shifted boxes: every pixel of one is within 3 px of the other
    assert hausdorff(_box((20, 20), 2, 6, 2, 6), _box((20, 20), 2, 6, 5, 9)) == pytest.approx(3.0)


def test_pixel_auc():
    gt = np.array([[0, 0, 1, 1]], bool)
    assert pixel_auc(np.array([[0.1, 0.2, 0.8, 0.9]]), gt) == 1.0
    assert pixel_auc(np.array([[0.9, 0.2, 0.8, 0.1]]), gt) == pytest.approx(0.25)  # 1 of 4 pairs ordered
    assert math.isnan(pixel_auc(np.ones((1, 4)), np.zeros((1, 4), bool)))


def test_segmentation_scores_and_summary():
    gt = _box((10, 10), 0, 4, 0, 4)
    prob = gt.astype(np.float32) * 0.9
    s = segmentation_scores(prob, gt)
    assert s["dice"] == 1.0 and s["hausdorff"] == 0.0 and s["pixel_auc"] == 1.0
    neg_gt = np.zeros((10, 10), bool)
    neg_prob = np.zeros((10, 10), np.float32)
    neg_prob[0, :5] = 0.7  # 5 false-positive pixels on a tumour-free slide
    summ = summarise_slides([prob, neg_prob], [gt, neg_gt])
    assert summ["dice_mean"] == 1.0  # per-slide mean over slides with tumour only
    assert summ["dice_global"] == pytest.approx(2 * 16 / (2 * 16 + 5))
    assert summ["specificity_neg"] == pytest.approx(0.95)


def test_detect_lesions_components():
    prob = np.zeros((10, 10), np.float32)
    prob[1:3, 1:3] = 0.6
    prob[2, 2] = 0.9
    prob[7, 7] = 0.8
    d = detect_lesions(prob, threshold=0.5)
    assert sorted((x.row, x.col, round(x.score, 2)) for x in d) == [(2, 2, 0.9), (7, 7, 0.8)]
    assert detect_lesions(np.zeros((4, 4)), 0.5) == []


def test_froc_hand_made():
    # slide A: two lesions; slide B: no lesion
    gt_a = _box((20, 20), 0, 5, 0, 5) | _box((20, 20), 10, 15, 10, 15)
    gt_b = np.zeros((20, 20), bool)
    dets_a = [Detection(2, 2, 0.9), Detection(3, 3, 0.4), Detection(18, 0, 0.7)]  # TP, same lesion, FP
    dets_b = [Detection(5, 5, 0.95), Detection(6, 6, 0.3)]  # two FPs
    r = froc([dets_a, dets_b], [gt_a, gt_b])
    assert r.n_lesions == 2 and r.n_slides == 2
    # thresholds: 0.95 -> sens 0, FP 1 (0.5/slide); 0.9 -> sens .5, FP .5/slide; 0.7 -> .5, 1/slide;
    # 0.3 -> .5, 1.5/slide. The second lesion is never hit.
    assert r.sensitivity_at[0.25] == 0.0
    assert r.sensitivity_at[0.5] == 0.5
    assert r.sensitivity_at[8.0] == 0.5
    assert r.score == pytest.approx((0 + 0.5 * 5) / 6)
    # a detection in the second lesion raises the curve to 1 at its FP rate
    r2 = froc([dets_a + [Detection(12, 12, 0.5)], dets_b], [gt_a, gt_b])
    assert r2.sensitivity_at[1.0] == 1.0 and r2.sensitivity_at[0.5] == 0.5
