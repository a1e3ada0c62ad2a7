"""Virtual adversarial training (VAT) for bags: the regulariser of Distill-to-Label's stage 1.

Miyato et al.'s VAT, applied to a MIL bag: find the perturbation ``r`` of the instance features
``x`` [B, N, D] that changes the bag output most (power iteration on the KL divergence), scale it to
norm ε, and penalise ``KL(F(x) || F(x + r_adv))``. The teacher's loss is
``CE(Y, F(x)) + α · KL(F(x) || F(x + r_adv))``.

Two ways to measure ε (``norm``):

- ``"bag"`` (default): ``‖r‖₂ = ε`` over the whole [N, D] bag (padding excluded). The adversary spends
  its budget where the bag output is sensitive, i.e. on the instances the attention looks at; the
  perturbation per instance shrinks as bags grow.
- ``"instance"``: every real instance gets its own perturbation of norm ε, so every tile of the bag is
  moved, whatever the bag size.

Padded positions (``mask`` False) are never perturbed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

BagLogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x [B, N, D], mask [B, N] bool) -> bag logits [B, C]``."""

VatNorm = Literal["bag", "instance"]


def kl_from_logits(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``KL(softmax(p) || softmax(q))``; ``p_logits``, ``q_logits`` [B, C]."""
    p_log = F.log_softmax(p_logits, dim=-1)
    q_log = F.log_softmax(q_logits, dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean()


def normalise_perturbation(d: torch.Tensor, mask: torch.Tensor, norm: VatNorm = "bag") -> torch.Tensor:
    """Scale ``d`` [B, N, D] to unit L2 norm per bag (over all real [N, D] entries) or per instance.

    Padded positions are zeroed. A zero direction stays zero (no division by zero).
    """
    d = d * mask.unsqueeze(-1).to(d.dtype)
    if norm == "bag":
        n = d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    elif norm == "instance":
        n = d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    else:
        raise ValueError(f"VAT norm must be 'bag' or 'instance', got {norm!r}")
    return d / n


def vat_perturbation(
    bag_logits_fn: BagLogitsFn,
    x: torch.Tensor,
    mask: torch.Tensor,
    clean_logits: torch.Tensor,
    *,
    xi: float = 1e-2,
    eps: float = 1.0,
    n_power: int = 1,
    norm: VatNorm = "bag",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The virtual adversarial perturbation ``r_adv`` [B, N, D] of ``x`` [B, N, D], norm ε.

    Power iteration: start from a random unit direction ``d``; ``n_power`` times, set
    ``d ← ∇_r KL(F(x) || F(x + ξ d))`` (normalised). ``clean_logits`` [B, C] are ``F(x)`` (treated as
    constants). ξ is the finite-difference step; it must be large enough for float32 (1e-6 in
    Miyato et al.'s image setting underflows on feature vectors, hence 1e-2 here).
    """
    if n_power < 1:
        raise ValueError("VAT needs at least one power iteration")
    target = clean_logits.detach()
    d = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    d = normalise_perturbation(d, mask, norm)
    x_const = x.detach()
    for _ in range(n_power):
        d = (xi * d).requires_grad_(True)
        kl = kl_from_logits(target, bag_logits_fn(x_const + d, mask))
        (grad,) = torch.autograd.grad(kl, d)
        d = normalise_perturbation(grad.detach(), mask, norm)
    return eps * d


def vat_loss(
    bag_logits_fn: BagLogitsFn,
    x: torch.Tensor,
    mask: torch.Tensor,
    clean_logits: torch.Tensor,
    **kwargs: float | int | str | torch.Generator | None,
) -> torch.Tensor:
    """``KL(F(x) || F(x + r_adv))`` (scalar) with ``r_adv`` from :func:`vat_perturbation`.

    Gradients flow through the perturbed forward pass only (the clean output is the fixed target,
    as in VAT), so the model learns to be smooth around the training bags.
    """
    r_adv = vat_perturbation(bag_logits_fn, x, mask, clean_logits, **kwargs)  # type: ignore[arg-type]
    return kl_from_logits(clean_logits.detach(), bag_logits_fn(x + r_adv, mask))
