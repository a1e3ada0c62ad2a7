"""VAT on bags: the perturbation has norm ε, respects padding, and raises the KL more than noise."""

from __future__ import annotations

import pytest
import torch

from histokd.methods.vat import kl_from_logits, normalise_perturbation, vat_loss, vat_perturbation
from histokd.models import build_model


@pytest.fixture()
def model_and_bag():
    torch.manual_seed(0)
    model = build_model("abmil", 8, 2, {"hidden": [16], "attn_dim": 8, "dropout": 0.0}).eval()
    x = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False  # the second bag is padded
    return model, x, mask


def _fn(model):
    return lambda x, m: model(x, m).bag_logits


@pytest.mark.parametrize("norm", ["bag", "instance"])
def test_perturbation_norm_and_padding(model_and_bag, norm) -> None:
    model, x, mask = model_and_bag
    clean = model(x, mask).bag_logits
    r = vat_perturbation(_fn(model), x, mask, clean, eps=0.7, n_power=1, norm=norm,
                         generator=torch.Generator().manual_seed(1))
    assert r.shape == x.shape
    assert torch.all(r[1, 4:] == 0)  # padding never perturbed
    if norm == "bag":
        assert torch.allclose(r.flatten(1).norm(dim=1), torch.full((2,), 0.7), atol=1e-5)
    else:
        n = r.norm(dim=-1)[mask]
        assert torch.allclose(n, torch.full_like(n, 0.7), atol=1e-5)


def test_adversarial_beats_random_direction(model_and_bag) -> None:
    model, x, mask = model_and_bag
    fn = _fn(model)
    clean = fn(x, mask)
    r_adv = vat_perturbation(fn, x, mask, clean, eps=0.5, n_power=2, generator=torch.Generator().manual_seed(2))
    kl_adv = kl_from_logits(clean, fn(x + r_adv, mask)).item()
    g = torch.Generator().manual_seed(3)
    kl_rand = []
    for _ in range(20):
        r = 0.5 * normalise_perturbation(torch.randn(x.shape, generator=g), mask, "bag")
        kl_rand.append(kl_from_logits(clean, fn(x + r, mask)).item())
    assert kl_adv > 0
    assert kl_adv > max(kl_rand)


def test_vat_loss_has_gradients(model_and_bag) -> None:
    model, x, mask = model_and_bag
    model.train()
    clean = model(x, mask).bag_logits
    loss = vat_loss(_fn(model), x, mask, clean, eps=0.5, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() >= 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
