"""TransMIL (Shao et al. 2021), compact: class token, two transformer layers, PPEG positional conv.

Attention (``attention``): ``"nystrom"`` (default, as the paper) is the Nyström approximation
(Xiong et al. 2021), O(N·m) in time and memory for m ``landmarks``, made padding-safe: the landmarks are
segment means over each bag's own real tokens, a bag with n <= m real tokens (class token included) gets
exact attention, the pseudo-inverse (``pinv_iters`` iterations of Razavi et al.'s scheme) is computed in
float32 and scaled per bag and head, and the residual depthwise conv over the values (kernel 33,
``nystrom_residual``) runs on each bag's real tokens laid out contiguously with zeros after them.
``"exact"`` is exact multi-head attention with key padding, evaluated in query chunks (time O(N²); memory
O(chunk·N) only without gradients: training on a bag of 10,000 tiles takes ~10 GB).
PPEG needs a square layout: each bag's n real tokens are laid out row-major
in its own ceil(√n)-sided grid, zero-filled (the paper repeats tokens instead), and grids are padded with
zeros to the batch's largest side, so a padded bag gives the same output as the unpadded one.
Token order matters through PPEG (and the Nyström segments and residual conv): not permutation invariant.
``instance_scores`` = the class token's attention to each tile in the last layer, as logits (mean over
heads) [B, N]; with Nyström these are still the exact logits q₀·k/√d (an O(N) product), not the
approximated weights.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from histokd.config import BaseConfig
from histokd.models.base import MILModel, MILOutput, full_mask, register_model


class MaskedSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, q_chunk: int = 2048) -> None:
        super().__init__()
        self.heads, self.q_chunk, self.dropout = heads, q_chunk, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, T, d], ``mask`` [B, T] -> (output [B, T, d], token-0 attention logits [B, T])."""
        B, T, d = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        key_mask = mask[:, None, None, :]  # [B, 1, 1, T]
        p = self.dropout if self.training else 0.0
        out = torch.cat(
            [
                F.scaled_dot_product_attention(q[:, :, i : i + self.q_chunk], k, v, attn_mask=key_mask, dropout_p=p)
                for i in range(0, T, self.q_chunk)
            ],
            2,
        )
        cls_logits = (q[:, :, :1] @ k.transpose(-1, -2)).squeeze(2).mean(1) / math.sqrt(d // self.heads)
        return self.out(out.transpose(1, 2).reshape(B, T, d)), cls_logits


RESIDUAL_KERNEL = 33  # the Nyströmformer's / TransMIL's depthwise conv over the values


def iterative_pinv(a: torch.Tensor, iters: int) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of ``a`` [..., m, m] by Razavi et al.'s iteration (as in the Nyströmformer).

    Z₀ = aᵀ / (‖a‖₁‖a‖∞) per matrix (so every bag and head is scaled on its own), then ``iters`` steps of
    Z ← ¼ Z (13I − aZ(15I − aZ(7I − aZ))). Run it in float32.
    """
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    scale = a.abs().sum(-2).amax(-1) * a.abs().sum(-1).amax(-1)  # ‖a‖₁ · ‖a‖∞, [...]
    z = a.transpose(-1, -2) / scale[..., None, None]
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def segment_means(x: torch.Tensor, n: torch.Tensor, m: int) -> torch.Tensor:
    """Means of ``m`` contiguous segments of each bag's first ``n`` tokens: ``x`` [B, H, T, dh], ``n`` [B]
    (every n >= m) -> [B, H, m, dh]. Token t < n belongs to segment ⌊t·m/n⌋ (sizes ⌊n/m⌋ or ⌈n/m⌉).

    Gathers each segment into a row of length ⌈max n / m⌉ (missing entries point at an appended zero row)
    and sums it, so the sums are deterministic and never touch tokens at or after ``n``."""
    B, H, T, dh = x.shape
    j = torch.arange(m + 1, device=x.device)
    start = (j[None] * n[:, None] + m - 1) // m  # ⌈j·n/m⌉, [B, m+1]
    size = start[:, 1:] - start[:, :-1]  # [B, m], all >= 1
    L = int(size.max())
    idx = start[:, :-1, None] + torch.arange(L, device=x.device)  # [B, m, L]
    idx = torch.where(torch.arange(L, device=x.device) < size[..., None], idx, torch.full_like(idx, T))
    xz = torch.cat([x, x.new_zeros(B, H, 1, dh)], 2)
    g = xz.gather(2, idx.reshape(B, 1, m * L, 1).expand(B, H, m * L, dh)).reshape(B, H, m, L, dh)
    return g.sum(3) / size[:, None, :, None].to(x.dtype)


def nystrom_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: torch.Tensor, m: int,
                      pinv_iters: int) -> torch.Tensor:
    """Nyström softmax attention for bags whose ``n`` [B] real tokens come first (all n >= m).

    ``q``, ``k``, ``v`` [B, H, T, dh] -> [B, H, T, dh]: softmax(q k̃ᵀ) · pinv(softmax(q̃ k̃ᵀ)) ·
    softmax(q̃ kᵀ) v, with q̃, k̃ the m segment means of each bag's real queries / keys and keys at or after
    ``n`` masked out. The two N×m factors run as ``scaled_dot_product_attention`` calls, so fused kernels need
    not keep the N×m weights for backward (on CPU, peak memory at N = 100,000 grows by 47 MB from m = 64 to
    256); the m×m core and its pseudo-inverse run in float32, outside autocast.
    """
    T, dh = q.shape[2:]
    qf, kf = q.float(), k.float()
    q_l, k_l = segment_means(qf, n, m), segment_means(kf, n, m)  # [B, H, m, dh]
    key_mask = (torch.arange(T, device=q.device)[None] < n[:, None])[:, None, None, :]  # [B, 1, 1, T]
    with torch.autocast(q.device.type, enabled=False):
        core = torch.softmax(q_l @ k_l.transpose(-1, -2) / math.sqrt(dh), -1)  # [B, H, m, m]
        z = iterative_pinv(core, pinv_iters)
        kv = F.scaled_dot_product_attention(q_l, kf, v.float(), attn_mask=key_mask)  # [B, H, m, dh]
        w = z @ kv
    return F.scaled_dot_product_attention(q, k_l.to(q.dtype), w.to(q.dtype))


class NystromSelfAttention(nn.Module):
    """Drop-in for :class:`MaskedSelfAttention` with Nyström attention over ``landmarks`` segment means.

    Each bag's real tokens are first moved to the front (stable, so order is kept) and moved back at the
    end; padding then only ever sits after a bag's tokens. Bags with n <= ``landmarks`` real tokens get exact
    attention (on their first n positions only), longer bags :func:`nystrom_attention`; the residual conv
    (kernel 33 along the sequence, one filter per head, shared over the head's channels) sees the values
    with padding zeroed, i.e. the conv's own zero padding, so it cannot leak padding either. Dropout is
    applied to the output (as in the Nyströmformer), not to attention weights.
    """

    def __init__(self, dim: int, heads: int, dropout: float, landmarks: int = 256, pinv_iters: int = 6,
                 residual: bool = True) -> None:
        super().__init__()
        self.heads, self.landmarks, self.pinv_iters = heads, landmarks, pinv_iters
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.res_conv = (nn.Conv2d(heads, heads, (RESIDUAL_KERNEL, 1), padding=(RESIDUAL_KERNEL // 2, 0),
                                   groups=heads, bias=False) if residual else None)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, T, d], ``mask`` [B, T] -> (output [B, T, d], token-0 attention logits [B, T])."""
        B, T, d = x.shape
        dh = d // self.heads
        n = mask.sum(1)
        order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # real tokens first, in order
        idx = order[..., None].expand(B, T, d)
        xc = x.gather(1, idx)
        q, k, v = self.qkv(xc).reshape(B, T, 3, self.heads, dh).permute(2, 0, 3, 1, 4)  # [B, H, T, dh]
        real = torch.arange(T, device=x.device)[None] < n[:, None]  # compacted mask: a prefix per bag
        v = v * real[:, None, :, None].to(v.dtype)
        small = n <= self.landmarks

        def exact(b: torch.Tensor | slice) -> torch.Tensor:  # on the first max(n) positions only, zeros after
            t = int(n[b].max())
            ys = F.scaled_dot_product_attention(q[b, :, :t], k[b, :, :t], v[b, :, :t], attn_mask=real[b, None, None, :t])
            return F.pad(ys, (0, 0, 0, T - t))

        def nystrom(b: torch.Tensor | slice) -> torch.Tensor:
            return nystrom_attention(q[b], k[b], v[b], n[b], self.landmarks, self.pinv_iters).to(v.dtype)

        if small.all() or not small.any():  # one kind of bag: no scatter into a shared buffer
            y = (exact if small.all() else nystrom)(slice(None))
        else:
            b_small, b_large = small.nonzero().squeeze(1), (~small).nonzero().squeeze(1)
            y = torch.zeros_like(v).index_put((b_small,), exact(b_small)).index_put((b_large,), nystrom(b_large))
        if self.res_conv is not None:
            y = y + self.res_conv(v)
        out = self.drop(self.out(y.transpose(1, 2).reshape(B, T, d)))
        cls_logits = (q[:, :, :1] @ k.transpose(-1, -2)).squeeze(2).mean(1) / math.sqrt(dh)
        return out.new_zeros(B, T, d).scatter(1, idx, out), cls_logits.new_zeros(B, T).scatter(1, order, cls_logits)


class TransLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, attention: str, landmarks: int, pinv_iters: int,
                 nystrom_residual: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn: nn.Module
        if attention == "nystrom":
            self.attn = NystromSelfAttention(dim, heads, dropout, landmarks, pinv_iters, nystrom_residual)
        else:
            self.attn = MaskedSelfAttention(dim, heads, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, cls_logits = self.attn(self.norm(x), mask)
        return x + y, cls_logits


class PPEG(nn.Module):
    """Pyramid position encoding: depthwise 7/5/3 convolutions over the square token grid, plus identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens`` [B, N, d] (instances only), ``mask`` [B, N] -> [B, N, d]."""
        B, _, d = tokens.shape
        n = mask.sum(1)
        side = torch.ceil(torch.sqrt(n.float())).long().clamp_min(1)  # per-bag grid side
        S = int(side.max())
        rank = (mask.cumsum(1) - 1).clamp_min(0)
        cell = (rank // side[:, None]) * S + rank % side[:, None]  # flat index in the S×S canvas
        cell = torch.where(mask, cell, torch.full_like(cell, S * S))  # padding -> a dump cell
        canvas = tokens.new_zeros(B, S * S + 1, d)
        canvas.scatter_(1, cell[..., None].expand(-1, -1, d), tokens * mask[..., None])
        grid = canvas[:, : S * S].transpose(1, 2).reshape(B, d, S, S)
        grid = grid + sum(c(grid) for c in self.convs)
        flat = torch.cat([grid.reshape(B, d, S * S).transpose(1, 2), canvas[:, S * S :]], 1)
        return flat.gather(1, cell[..., None].expand(-1, -1, d))


class TransMILArgs(BaseConfig):
    dim: int = 128
    heads: int = 4
    dropout: float = 0.1
    attention: Literal["exact", "nystrom"] = "nystrom"
    landmarks: int = Field(256, ge=1)  # Nyström landmarks m; bags with <= m tokens get exact attention
    pinv_iters: int = Field(6, ge=1)  # iterations of the pseudo-inverse
    nystrom_residual: bool = True  # depthwise conv (kernel 33) over the values, added to the attention


@register_model("transmil")
class TransMIL(MILModel):
    Args = TransMILArgs
    permutation_invariant = False

    def __init__(self, in_dim: int, n_classes: int = 2, dim: int = 128, heads: int = 4, dropout: float = 0.1,
                 attention: str = "nystrom", landmarks: int = 256, pinv_iters: int = 6,
                 nystrom_residual: bool = True) -> None:
        super().__init__(in_dim, n_classes)
        attn = {"attention": attention, "landmarks": landmarks, "pinv_iters": pinv_iters,
                "nystrom_residual": nystrom_residual}
        self.fc = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layer1 = TransLayer(dim, heads, dropout, **attn)
        self.ppeg = PPEG(dim)
        self.layer2 = TransLayer(dim, heads, dropout, **attn)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """``x`` [B, N, D] -> bag logits [B, C]; instance scores = class-token attention logits [B, N]."""
        mask = full_mask(x) if mask is None else mask
        B = x.shape[0]
        h = self.fc(x)
        tmask = torch.cat([mask.new_ones(B, 1), mask], 1)
        t = torch.cat([self.cls_token.expand(B, -1, -1), h], 1)
        t, _ = self.layer1(t, tmask)
        t = torch.cat([t[:, :1], self.ppeg(t[:, 1:], mask)], 1)
        t, cls_logits = self.layer2(t, tmask)
        cls = self.norm(t[:, 0])
        return MILOutput(self.classifier(cls), cls_logits[:, 1:])
