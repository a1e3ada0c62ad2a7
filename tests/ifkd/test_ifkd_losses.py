"""IFKD losses: hard-example weights, soft targets (no truncation), Dice."""

from __future__ import annotations

import pytest
import torch

from histokd.segmentation.losses import example_weights, fuse_maps, pixel_bce, seg_loss, soft_dice_loss, weighted_ce


def test_hard_example_weights_mean_one_and_ordered():
    loss = torch.tensor([[0.1, 0.5, 2.0, 1.0], [0.3, 0.3, 0.3, 0.3]])
    target = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    w = example_weights(loss, target, "hard")
    assert w.sum(1).tolist() == pytest.approx([4.0, 4.0])  # normalised to mean 1 per image
    order = torch.argsort(loss[0])
    assert (torch.diff(w[0, order]) > 0).all()  # harder pixels weigh more
    assert w[1].tolist() == pytest.approx([1.0] * 4)  # equal losses -> equal weights
    # softmax by hand for image 0
    e = torch.exp(loss[0])
    assert w[0].tolist() == pytest.approx((4 * e / e.sum()).tolist())
    easy = example_weights(loss, target, "easy")
    assert (torch.diff(easy[0, order]) < 0).all()
    assert example_weights(loss, target, "none").eq(1).all()


def test_weights_only_when_target_has_both_classes():
    loss = torch.tensor([[0.1, 3.0, 0.2]])
    w = example_weights(loss, torch.zeros(1, 3), "hard")
    assert w.tolist() == [[1.0, 1.0, 1.0]]
    with pytest.raises(ValueError):
        example_weights(loss, torch.zeros(1, 3), "bogus")  # type: ignore[arg-type]


def test_soft_targets_are_not_truncated():
    t = torch.full((1, 1, 2, 2), 0.7)
    p = torch.full((1, 1, 2, 2), 0.7, requires_grad=True)
    ell = pixel_bce(p, t).sum()
    ell.backward()
    assert p.grad.abs().max() < 1e-5  # BCE against a soft target is minimised at p = t
    q = torch.full((1, 1, 2, 2), 0.1)
    assert pixel_bce(q, t).mean() > pixel_bce(torch.full_like(q, 0.7), t).mean()


def test_soft_dice():
    t = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert soft_dice_loss(t, t).item() == pytest.approx(0.0)
    p = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    assert soft_dice_loss(p, t, smooth=0).item() == pytest.approx(1.0)
    assert soft_dice_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == pytest.approx(0.0)


def test_seg_loss_combines():
    t = torch.rand(2, 1, 8, 8)
    p = torch.rand(2, 1, 8, 8)
    l1 = seg_loss([p], p, t, dice_weight=1, ce_weight=0)
    assert l1.item() == pytest.approx(soft_dice_loss(p, t).item())
    l2 = seg_loss([p], p, t, dice_weight=0, ce_weight=1, mode="none")
    assert l2.item() == pytest.approx(pixel_bce(p, t).mean().item())
    assert weighted_ce(p, t, "hard").item() >= weighted_ce(p, t, "none").item() - 1e-6


def test_fuse_maps_arithmetic():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert fuse_maps(a, b, 0.3).tolist() == pytest.approx([0.3, 0.7])
    with pytest.raises(ValueError):
        fuse_maps(a, b, 1.5)
