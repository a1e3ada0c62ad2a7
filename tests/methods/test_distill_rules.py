"""The distillation methods' shared rules (methods/distill/rules.py): pseudo-labels, soft targets and the
weighted soft cross-entropy, hard positive mining, the max- and top-k-tile bag rules, the negative class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histokd.errors import InputError
from histokd.methods.distill.rules import (
    hard_positive_keep,
    max_bag_probs,
    top_bag_probs,
    minmax_pseudo_labels,
    negative_class_index,
    soft_targets,
    weighted_soft_ce,
)


def test_minmax_pseudo_labels_global_and_negatives_zero() -> None:
    s_pos = torch.tensor([1.0, 3.0, 5.0])
    s_neg = torch.tensor([-1.0, 2.0])
    y_pos, y_neg = minmax_pseudo_labels([s_pos, s_neg], [True, False], norm="global")
    # global min -1, max 5 -> (s + 1) / 6, clamped
    assert torch.allclose(y_pos, torch.tensor([2 / 6, 4 / 6, 1 - 1e-5]))
    assert torch.equal(y_neg, torch.zeros(2))


def test_minmax_pseudo_labels_per_bag_clamped() -> None:
    (y,) = minmax_pseudo_labels([torch.tensor([2.0, 4.0, 3.0])], [True], norm="bag")
    assert torch.allclose(y, torch.tensor([1e-5, 1 - 1e-5, 0.5]))
    assert float(y.min()) > 0 and float(y.max()) < 1


def test_minmax_pseudo_labels_anchored_on_negative_bags() -> None:
    s_pos = torch.tensor([0.0, 2.0, 4.0, 6.0])
    s_neg = torch.tensor([-5.0, 0.0, 1.0, 2.0])  # quantile 1.0 of the negatives = their max = 2
    y_pos, y_neg = minmax_pseudo_labels([s_pos, s_neg], [True, False], norm="negative", neg_quantile=1.0)
    # evidence no higher than the negative bags reach -> (clamped) 0; the global max -> 1
    assert torch.allclose(y_pos, torch.tensor([1e-5, 1e-5, 0.5, 1 - 1e-5]))
    assert torch.equal(y_neg, torch.zeros(4))
    y_q = minmax_pseudo_labels([s_pos, s_neg], [True, False], norm="negative", neg_quantile=0.5)[0]
    lo = float(torch.quantile(s_neg, 0.5))  # 0.5
    assert torch.allclose(y_q, ((s_pos - lo) / (6.0 - lo)).clamp(1e-5, 1 - 1e-5))
    # no negative bag: the global rule
    (y_g,) = minmax_pseudo_labels([s_pos], [True], norm="negative")
    assert torch.allclose(y_g, minmax_pseudo_labels([s_pos], [True], norm="global")[0])


def test_soft_targets_and_weighted_ce() -> None:
    t = soft_targets(torch.tensor([0.25, 1.0]), bag_class=1, neg=0, n_classes=2)
    assert torch.allclose(t, torch.tensor([[0.75, 0.25], [0.0, 1.0]]))
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    w = torch.tensor([0.1, 0.9])
    expected = -(0.1 * 0.75 + 0.9 * 0.25 + 0.9 * 1.0) * np.log(0.5) / 2
    assert weighted_soft_ce(logits, t, w).item() == pytest.approx(expected, rel=1e-6)


def test_mining_drops_exactly_above_threshold() -> None:
    p = torch.tensor([0.1, 0.6, 0.5, 0.95, 0.3])
    keep = hard_positive_keep(p, 0.5)
    assert keep.tolist() == [True, False, True, False, True]
    # nothing left -> keep only the argmax
    keep = hard_positive_keep(torch.tensor([0.7, 0.99, 0.8]), 0.5)
    assert keep.tolist() == [False, True, False]


def test_max_bag_rule_and_negative_class() -> None:
    p = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    assert torch.allclose(max_bag_probs(p, neg=0), torch.tensor([0.3, 0.7]))
    assert negative_class_index(["normal", "tumour"]) == 0
    assert negative_class_index(["tumour", "normal"]) == 1
    assert negative_class_index(["Tumor", "normal"]) == 1  # one rule, any case (was case-sensitive here)
    with pytest.raises(InputError):
        negative_class_index(["a", "b"], "c")


def test_top_k_bag_rule_means_the_k_highest_tiles() -> None:
    p = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    assert torch.allclose(top_bag_probs(p, neg=0, k=1), max_bag_probs(p, neg=0))
    assert torch.allclose(top_bag_probs(p, neg=0, k=3), torch.tensor([1 - (0.9 + 0.7 + 0.6) / 3, (0.9 + 0.7 + 0.6) / 3]))
    assert torch.allclose(top_bag_probs(p, neg=0, k=10), torch.tensor([1 - 0.6, 0.6]))  # a bag of 4: all its tiles
    # one look-alike tile no longer decides a bag: a single high tile among low ones scores less than several
    lone = torch.tensor([[0.05, 0.95]] + [[0.9, 0.1]] * 9)
    several = torch.tensor([[0.2, 0.8]] * 3 + [[0.9, 0.1]] * 7)
    assert max_bag_probs(lone, 0)[1] > max_bag_probs(several, 0)[1]
    assert top_bag_probs(lone, 0, 3)[1] < top_bag_probs(several, 0, 3)[1]
    # three classes: each non-negative class its own top-k mean, the negative one the rest
    q = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.2, 0.5], [0.1, 0.6, 0.3]])
    out = top_bag_probs(q, neg=0, k=2)
    raw = torch.tensor([1 - 0.65, 0.65, 0.4])
    assert torch.allclose(out, raw / raw.sum())
