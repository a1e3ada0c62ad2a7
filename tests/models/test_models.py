"""Every registered MIL model: shapes, padding / permutation invariance, gradients, save/load."""

from __future__ import annotations

import pytest
import torch

from histokd.models import MODELS, build_model
from histokd.models.chowder import extreme_scores

D, C = 12, 2
NAMES = MODELS.names()


def _model(name: str, n_classes: int = C) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, D, n_classes).eval()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n_classes", [2, 3])
def test_output_shapes(name: str, n_classes: int) -> None:
    m = _model(name, n_classes)
    x = torch.randn(3, 9, D)
    out = m(x)
    assert out.bag_logits.shape == (3, n_classes)
    assert out.instance_scores.shape[:2] == (3, 9)
    assert out.instance_scores.dim() == 2 or out.instance_scores.shape[2] == n_classes
    assert m.instance_logits(x).shape == (3, 9, n_classes)
    assert torch.isfinite(out.bag_logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_padding_invariance(name: str) -> None:
    """A bag padded inside a batch gives the outputs it gives alone."""
    m = _model(name)
    torch.manual_seed(1)
    a, b = torch.randn(1, 5, D), torch.randn(1, 11, D)
    x = torch.zeros(2, 11, D)
    x[0, :5], x[1] = a[0], b[0]
    x[0, 5:] = 7.0  # garbage in padding must not leak
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[0, :5], mask[1] = True, True
    out = m(x, mask)
    alone_a, alone_b = m(a), m(b)
    torch.testing.assert_close(out.bag_logits[0], alone_a.bag_logits[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.bag_logits[1], alone_b.bag_logits[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.instance_scores[0, :5], alone_a.instance_scores[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", [n for n in NAMES if MODELS.get(n).permutation_invariant])
def test_permutation_invariance(name: str) -> None:
    m = _model(name)
    x = torch.randn(1, 10, D)
    perm = torch.randperm(10)
    o1, o2 = m(x), m(x[:, perm])
    torch.testing.assert_close(o1.bag_logits, o2.bag_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(o1.instance_scores[:, perm], o2.instance_scores, atol=1e-5, rtol=1e-4)


def test_transmil_is_order_sensitive() -> None:
    """TransMIL claims no permutation invariance (PPEG); make sure the claim is honest."""
    m = _model("transmil")
    x = torch.randn(1, 16, D)
    assert not torch.allclose(m(x).bag_logits, m(x.flip(1)).bag_logits, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    m = _model(name)
    m.train()
    torch.manual_seed(2)
    x = torch.randn(2, 20, D)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 15:] = False
    y = torch.tensor([0, 1])
    out = m(x, mask)
    loss = m.bag_loss(out, y)
    extra = m.loss_extra(out, y)
    if extra is not None:
        loss = loss + extra
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


@pytest.mark.parametrize("name", NAMES)
def test_save_load_identical(name: str, tmp_path) -> None:
    m = _model(name)
    torch.save(m.state_dict(), tmp_path / "m.pt")
    torch.manual_seed(123)  # a different init, overwritten by the load
    m2 = build_model(name, D, C).eval()
    m2.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    x = torch.randn(1, 7, D)
    torch.testing.assert_close(m(x).bag_logits, m2(x).bag_logits, atol=0, rtol=0)


def test_unknown_model_args_refused() -> None:
    from histokd.errors import InputError

    with pytest.raises(InputError, match="hiden"):
        build_model("abmil", D, C, {"hiden": [3]})


def test_chowder_extremes_ignore_padding_and_repeat_for_small_bags() -> None:
    s = torch.tensor([[3.0, 1.0, 2.0, 100.0], [5.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    e = extreme_scores(s, mask, 2)
    assert e[0].tolist() == [3.0, 2.0, 1.0, 2.0]  # top (desc) then bottom (asc); 100 is padding
    assert e[1].tolist() == [5.0, 5.0, 5.0, 5.0]  # one tile: repeated


def test_chowder_ensemble_averages_members() -> None:
    torch.manual_seed(0)
    m = build_model("chowder", D, C, {"n_ensemble": 3}).eval()
    x = torch.randn(2, 8, D)
    out = m(x)
    probs = torch.softmax(out.extras["member_logits"], -1).mean(0)
    torch.testing.assert_close(torch.softmax(out.bag_logits, -1), probs, atol=1e-6, rtol=1e-5)
    assert m.loss_extra(out, torch.tensor([0, 1])) > 0  # L2 on the scorers


def test_abmil_chunked_equals_whole() -> None:
    torch.manual_seed(0)
    whole = build_model("abmil", D, C, {"chunk_size": 10_000})
    chunked = build_model("abmil", D, C, {"chunk_size": 7})
    chunked.load_state_dict(whole.state_dict())
    whole.eval(), chunked.eval()
    x = torch.randn(1, 50, D, requires_grad=True)
    with torch.enable_grad():
        a, b = whole(x).bag_logits, chunked(x).bag_logits
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        ga = torch.autograd.grad(a.sum(), x)[0]
        gb = torch.autograd.grad(b.sum(), x)[0]
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)


def _witness_bags(n_bags: int = 24, n: int = 12, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    """Positive bags hold 3 witnesses shifted by +2 along feature 0; negative bags none."""
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n_bags):
        x = torch.randn(n, D, generator=g)
        y = i % 2
        if y:
            x[:3, 0] += 2.0
        bags.append((x, y))
    return bags


@pytest.mark.parametrize("flip", [False, True])
def test_chowder_after_fit_orients_tile_scores(flip: bool) -> None:
    torch.manual_seed(0)
    m = build_model("chowder", D, 2, {"r": 2, "n_ensemble": 2}).eval()
    for member in m.members:
        with torch.no_grad():  # a scorer that reads witnesses, and an MLP that reads high (or low) scores as positive
            member.scorer.weight.zero_()
            member.scorer.weight[0, 0] = -1.0 if flip else 1.0
            member.mlp[0].weight.fill_(1.0)
            member.mlp[0].bias.zero_()
            member.mlp[3].weight.fill_(1.0)
            member.mlp[-1].weight.copy_(torch.tensor([[-1.0] * member.mlp[-1].in_features,
                                                      [1.0] * member.mlp[-1].in_features]) * (-1 if flip else 1))
    bags = _witness_bags()
    x, _ = bags[1]
    before = m(x.unsqueeze(0))
    m.after_fit(bags, positive=1)
    after = m(x.unsqueeze(0))
    assert m.score_sign.tolist() == ([-1.0, -1.0] if flip else [1.0, 1.0])
    assert torch.equal(before.bag_logits, after.bag_logits)  # bag predictions untouched
    # oriented: the witnesses (first 3 tiles) score highest whichever sign the scorer learned
    assert after.instance_scores[0, :3].min() > after.instance_scores[0, 3:].max()
    m2 = build_model("chowder", D, 2, {"r": 2, "n_ensemble": 2})
    m2.load_state_dict(m.state_dict())  # the sign is saved with the weights
    assert torch.equal(m2.score_sign, m.score_sign)


@pytest.mark.parametrize("name", ["abmil", "gated-abmil"])
def test_abmil_ensemble_is_independent_members(name: str, tmp_path) -> None:
    """E members: bag output = mean member probability; each member's gradient is its own loss's gradient;
    padding changes nothing; save/load is exact."""
    torch.manual_seed(0)
    m = build_model(name, D, C, {"n_ensemble": 3}).eval()
    assert len(m.members) == 3 and all(mem.members is None for mem in m.members)
    x = torch.randn(2, 8, D)
    out = m(x)
    solo = [mem(x) for mem in m.members]
    probs = torch.stack([torch.softmax(o.bag_logits, -1) for o in solo]).mean(0)
    torch.testing.assert_close(torch.softmax(out.bag_logits, -1), probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.instance_scores, torch.stack([o.instance_scores for o in solo]).mean(0))
    inst = torch.stack([torch.softmax(mem.instance_logits(x), -1) for mem in m.members]).mean(0)
    torch.testing.assert_close(torch.softmax(m.instance_logits(x), -1), inst, atol=1e-6, rtol=1e-5)
    # padding
    xp = torch.cat([x[:1], torch.full((1, 4, D), 9.0)], 1)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, :8] = True
    torch.testing.assert_close(m(xp, mask).bag_logits, out.bag_logits[:1], atol=1e-5, rtol=1e-4)
    # gradients: the ensemble loss gives member 1 exactly the gradient of its own loss
    y = torch.tensor([0, 1])
    m.zero_grad()
    m.bag_loss(m(x), y).backward()
    got = [p.grad.clone() for p in m.members[1].parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    m.zero_grad()
    m.members[1].bag_loss(m.members[1](x), y).backward()
    for g, p in zip(got, m.members[1].parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-5)
    # save / load
    torch.save(m.state_dict(), tmp_path / "m.pt")
    torch.manual_seed(5)
    m2 = build_model(name, D, C, {"n_ensemble": 3}).eval()
    m2.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    torch.testing.assert_close(m2(x).bag_logits, out.bag_logits, atol=0, rtol=0)
