"""IFKD losses: soft Dice + pixel cross-entropy with online example weighting, and target fusion.

Targets are *soft* maps in [0, 1] (fused teacher/student probabilities). The IKD-MIL reference code
casts them with ``.long()``, which truncates every value below 1.0 to 0 and so trains towards
background; here the cross-entropy is the binary CE against the soft target,
``ℓ = -(t log p + (1 - t) log(1 - p))``, which is minimised exactly at ``p = t``.
"""

from __future__ import annotations

from typing import Literal

import torch

EPS = 1e-6
Weighting = Literal["hard", "easy", "none"]


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2Σpt + s) / (Σp + Σt + s)`` per image, averaged over the batch.

    ``prob``, ``target``: [B, 1, H, W] (or [B, H, W]) in [0, 1]. ``smooth`` keeps the loss defined on
    tumour-free images, where it pushes ``Σp`` towards 0.
    """
    p = prob.flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1.0 - (2.0 * inter + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()


def pixel_bce(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary CE of probabilities against soft targets, per pixel: [B, 1, H, W] -> [B, H*W]."""
    p = prob.flatten(1).clamp(EPS, 1.0 - EPS)
    t = target.flatten(1)
    return -(t * torch.log(p) + (1.0 - t) * torch.log1p(-p))


def example_weights(
    pixel_loss: torch.Tensor,
    target: torch.Tensor,
    mode: Weighting = "hard",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Online per-pixel weights, per image: ``w = HW · softmax(±ℓ / τ)`` so that ``mean(w) = 1``.

    ``pixel_loss``: [B, P] (detached inside); ``target``: [B, ...] soft target with P pixels per image.
    ``mode="hard"`` weighs high-loss pixels more (softmax of +ℓ, online hard-example mining);
    ``mode="easy"`` weighs low-loss pixels more (softmax of -ℓ, as the OEEM weighting of the IKD-MIL
    code, which damps label noise); ``"none"`` gives 1 everywhere. As in OEEM, the weighting applies
    only to images whose target holds both classes (some pixel ≥ 0.5 and some < 0.5); single-class
    images get weight 1, so a tumour-free image does not concentrate its loss on a few pixels.
    Returns [B, P] weights, no gradient.
    """
    ell = pixel_loss.detach()
    if mode == "none":
        return torch.ones_like(ell)
    if mode not in ("hard", "easy"):
        raise ValueError(f"unknown example weighting {mode!r}; use 'hard', 'easy' or 'none'")
    sign = 1.0 if mode == "hard" else -1.0
    n = ell.shape[1]
    w = torch.softmax(sign * ell / temperature, dim=1) * n
    t = target.detach().flatten(1)
    both = ((t >= 0.5).any(1) & (t < 0.5).any(1)).unsqueeze(1)
    return torch.where(both, w, torch.ones_like(w))


def weighted_ce(
    prob: torch.Tensor, target: torch.Tensor, mode: Weighting = "hard", temperature: float = 1.0
) -> torch.Tensor:
    """Mean of ``w · ℓ`` over pixels and images (``ℓ``: soft binary CE, ``w``: :func:`example_weights`)."""
    ell = pixel_bce(prob, target)
    w = example_weights(ell, target, mode, temperature)
    return (w * ell).mean()


def seg_loss(
    side_probs: list[torch.Tensor],
    fused: torch.Tensor,
    target: torch.Tensor,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    mode: Weighting = "hard",
    temperature: float = 1.0,
) -> torch.Tensor:
    """IFKD student loss: Dice on every side output and on the fused map, weighted CE on the fused map.

    ``side_probs``: list of [B, 1, H, W] probabilities (one entry for a single-output net, which is
    then the fused map too); ``fused``, ``target``: [B, 1, H, W].
    """
    maps = side_probs if len(side_probs) == 1 else [*side_probs, fused]
    dice = sum(soft_dice_loss(p, target) for p in maps) / len(maps)
    return dice_weight * dice + ce_weight * weighted_ce(fused, target, mode, temperature)


def fuse_maps(teacher: "torch.Tensor | object", student: "torch.Tensor | object", teacher_weight: float):
    """Next-round target ``w_T · teacher + (1 - w_T) · student`` (arrays or tensors of equal shape)."""
    if not 0.0 <= teacher_weight <= 1.0:
        raise ValueError(f"teacher_weight must be in [0, 1], got {teacher_weight}")
    return teacher_weight * teacher + (1.0 - teacher_weight) * student  # type: ignore[operator]
