"""TransMIL with Nyström attention: padding safety, agreement with exact attention, approximation quality."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from histokd.models import build_model
from histokd.models.transmil import NystromSelfAttention, iterative_pinv, nystrom_attention

D, C = 12, 2


def _model(landmarks: int = 4, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("transmil", D, C, {"attention": "nystrom", "landmarks": landmarks, **kw}).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Bags of 2, 5 and 11 tiles (3, 6, 12 tokens with the class token: exact and Nyström paths with 4
    landmarks), padded with garbage; the 5-tile bag's padding is interleaved, not only at the end."""
    g = torch.Generator().manual_seed(1)
    bags = [torch.randn(n, D, generator=g) for n in (2, 5, 11)]
    x = torch.full((3, 11, D), 7.0)
    mask = torch.zeros(3, 11, dtype=torch.bool)
    pos = [torch.arange(2), torch.tensor([0, 2, 3, 6, 9]), torch.arange(11)]
    for i, (bag, p) in enumerate(zip(bags, pos)):
        x[i, p], mask[i, p] = bag, True
    return x, mask, bags


def test_args_and_build_by_name() -> None:
    from histokd.errors import InputError

    m = build_model("transmil", D, C, {"attention": "nystrom"})
    assert isinstance(m.layer1.attn, NystromSelfAttention) and m.layer2.attn.landmarks == 256
    assert m.layer1.attn.res_conv is not None and m.layer1.attn.res_conv.kernel_size == (33, 1)
    assert build_model("transmil", D, C, {"attention": "nystrom", "nystrom_residual": False}).layer1.attn.res_conv is None
    assert isinstance(build_model("transmil", D, C).layer1.attn, NystromSelfAttention)  # Nyström by default, as the paper
    assert not isinstance(build_model("transmil", D, C, {"attention": "exact"}).layer1.attn, NystromSelfAttention)
    with pytest.raises(InputError):
        build_model("transmil", D, C, {"attention": "linformer"})
    with pytest.raises(InputError):
        build_model("transmil", D, C, {"attention": "nystrom", "landmarks": 0})


def test_shapes_and_single_tile() -> None:
    x, mask, _ = _batch()
    for m in (_model(), _model(landmarks=1), _model(landmarks=256)):
        out = m(x, mask)
        assert out.bag_logits.shape == (3, C) and out.instance_scores.shape == (3, 11)
        assert torch.isfinite(out.bag_logits).all()
        one = m(torch.randn(1, 1, D))  # 2 tokens: Nyström path with 1 landmark, exact path otherwise
        assert one.bag_logits.shape == (1, C) and one.instance_scores.shape == (1, 1)
        assert torch.isfinite(one.bag_logits).all()
        assert m.instance_logits(x[:, :4]).shape == (3, 4, C)


@pytest.mark.parametrize("landmarks", [1, 4, 256])
def test_padding_invariance(landmarks: int) -> None:
    """Each bag in the padded batch (garbage padding, some of it between real tiles) gives what it gives alone."""
    m = _model(landmarks)
    x, mask, bags = _batch()
    out = m(x, mask)
    for i, bag in enumerate(bags):
        alone = m(bag[None])
        torch.testing.assert_close(out.bag_logits[i], alone.bag_logits[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.instance_scores[i, mask[i]], alone.instance_scores[0], atol=1e-5, rtol=1e-4)


def test_equals_exact_model_when_landmarks_cover_the_bag() -> None:
    """With m >= n tokens and no residual conv, Nyström TransMIL is the exact model (same weights)."""
    torch.manual_seed(0)
    exact = build_model("transmil", D, C, {"attention": "exact"}).eval()
    nys = build_model("transmil", D, C, {"attention": "nystrom", "landmarks": 64, "nystrom_residual": False}).eval()
    nys.load_state_dict(exact.state_dict())
    x, mask, _ = _batch()
    a, b = exact(x, mask), nys(x, mask)
    torch.testing.assert_close(a.bag_logits, b.bag_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.instance_scores[mask], b.instance_scores[mask], atol=1e-5, rtol=1e-4)


def test_nystrom_formula_is_exact_with_one_landmark_per_token() -> None:
    """m = n: every token is its own landmark, so A·pinv(A)·A·v = A·v once the pseudo-inverse has converged."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 24, 8).unbind(0)
    n = torch.tensor([24, 20])  # second bag: 4 padded positions at the end
    out = nystrom_attention(q, k, v, n, 20, pinv_iters=40)
    torch.testing.assert_close(out[1, :, :20], F.scaled_dot_product_attention(q[1:, :, :20], k[1:, :, :20], v[1:, :, :20])[0],
                               atol=1e-4, rtol=1e-3)


def test_iterative_pinv() -> None:
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(3, 6, 6), -1) + 0.5 * torch.eye(6)  # well conditioned
    torch.testing.assert_close(iterative_pinv(a, 20), torch.linalg.pinv(a), atol=1e-4, rtol=1e-3)
    assert iterative_pinv(a.double(), 3).dtype == torch.float64


def test_approximates_exact_attention_on_smooth_inputs() -> None:
    """Tokens on a smooth curve (rank-8 features): Nyström with few landmarks is close to exact attention,
    far closer than a wrong baseline (uniform attention), and improves with more landmarks."""
    T, H, dh = 1500, 2, 8
    t = torch.linspace(0, 1, T)
    feats = torch.stack([torch.sin(2 * math.pi * f * t + p) for f, p in
                         zip([1, 2, 3, 0.5, 1.5, 2.5, 1, 2], [0, 1, 2, 3, 4, 5, 6, 0.5])], -1)  # [T, 8]
    w = torch.randn(3, H, 8, dh, generator=torch.Generator().manual_seed(0))
    q, k, v = (torch.einsum("tc,hcd->htd", feats, w[i])[None] for i in range(3))
    exact = F.scaled_dot_product_attention(q, k, v)

    def rel(y: torch.Tensor) -> float:
        return float((y - exact).norm() / exact.norm())

    n = torch.tensor([T])
    err8, err32 = (rel(nystrom_attention(q, k, v, n, m, pinv_iters=6)) for m in (8, 32))
    uniform = rel(v.mean(2, keepdim=True).expand_as(v))
    assert uniform > 0.5
    assert err32 < 0.05 and err32 < 0.1 * uniform
    assert err32 < err8


def test_gradients_reach_every_parameter() -> None:
    m = _model()
    m.train()
    x, mask, _ = _batch()
    m.bag_loss(m(x, mask), torch.tensor([0, 1, 1])).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_save_load_identical(tmp_path) -> None:
    m = _model()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    torch.manual_seed(123)
    m2 = build_model("transmil", D, C, {"attention": "nystrom", "landmarks": 4}).eval()
    m2.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    x, mask, _ = _batch()
    torch.testing.assert_close(m(x, mask).bag_logits, m2(x, mask).bag_logits, atol=0, rtol=0)


def test_bf16_autocast_runs() -> None:
    """Mixed precision (as the engine uses on GPU): the pseudo-inverse still runs in float32."""
    m = _model()
    x, mask, _ = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, mask)
    assert torch.isfinite(out.bag_logits).all()
    torch.testing.assert_close(out.bag_logits.float(), m(x, mask).bag_logits, atol=0.1, rtol=0.1)
