"""VICReg and Barlow Twins terms against values computed by hand on 2 x 2 embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from histokd.methods.more_from_less import barlow_twins_loss, off_diagonal, vicreg_loss, vicreg_terms

ZA = torch.tensor([[1.0, 2.0], [3.0, 0.0]])


def test_off_diagonal():
    m = torch.arange(9.0).view(3, 3)
    assert off_diagonal(m).tolist() == [1, 2, 3, 5, 6, 7]


def test_vicreg_terms_by_hand():
    zb = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # no variance at all
    t = vicreg_terms(ZA, zb, gamma=1.0, eps=1e-4)
    # invariance: mean of (0, 2, 2, 0)^2 = 2
    assert t["invariance"].item() == pytest.approx(2.0)
    # variance: za has unbiased var 2 per dim -> std 1.414 > 1 -> 0; zb std = sqrt(1e-4) = 0.01 -> 0.99;
    # averaged over the two branches -> 0.495
    assert t["variance"].item() == pytest.approx(0.495, abs=1e-6)
    # covariance: za centred [[-1, 1], [1, -1]] -> Cov [[2, -2], [-2, 2]]; off-diagonal squares 8, / D=2 -> 4
    assert t["covariance"].item() == pytest.approx(4.0)
    loss, terms = vicreg_loss(ZA, zb)  # λ = μ = 25, ν = 1
    assert loss.item() == pytest.approx(25 * 2 + 25 * 0.495 + 4, abs=1e-4)
    assert set(terms) == {"invariance", "variance", "covariance"}


def test_vicreg_weights_and_gamma():
    zb = ZA.clone()
    loss, terms = vicreg_loss(ZA, zb, sim_weight=1.0, var_weight=2.0, cov_weight=3.0, gamma=2.0, eps=0.0)
    # identical views -> invariance 0; std sqrt(2) per dim, gamma 2 -> 2 - 1.41421 per dim and branch
    assert terms["invariance"] == 0.0
    assert terms["variance"] == pytest.approx(2 - math.sqrt(2), abs=1e-6)
    assert terms["covariance"] == pytest.approx(8.0)  # 4 per branch
    assert loss.item() == pytest.approx(2 * (2 - math.sqrt(2)) + 3 * 8, abs=1e-5)


def test_barlow_twins_by_hand():
    zb = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    # standardised: na = [[-1, 1], [1, -1]], nb = [[1, -1], [-1, 1]] -> C = [[-1, 1], [1, -1]]
    loss, terms = barlow_twins_loss(ZA, zb, lambd=0.5, eps=0.0)
    assert terms["on_diagonal"] == pytest.approx(8.0)  # 2 * (−1 − 1)^2
    assert terms["off_diagonal"] == pytest.approx(2.0)
    assert loss.item() == pytest.approx(8.0 + 0.5 * 2.0)
    # perfectly correlated, decorrelated dims -> loss 0
    z = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    loss0, _ = barlow_twins_loss(z, z, eps=0.0)
    assert loss0.item() == pytest.approx(0.0, abs=1e-6)


def test_losses_have_gradients():
    za = torch.randn(16, 8, requires_grad=True)
    zb = torch.randn(16, 8)
    for fn in (vicreg_loss, barlow_twins_loss):
        loss, _ = fn(za, zb)
        (g,) = torch.autograd.grad(loss, za)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
