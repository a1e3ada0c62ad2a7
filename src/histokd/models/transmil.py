"""TransMIL (Shao et al. 2021), compact: class token, two transformer layers, PPEG positional conv.

Attention is exact multi-head attention with key padding (evaluated in query chunks so memory is
O(chunk·N), time O(N²)); the Nyström approximation of the paper is not used, so for very large bags train
with the engine's bag-size cap. PPEG needs a square layout: each bag's n real tokens are laid out row-major
in its own ceil(√n)-sided grid, zero-filled (the paper repeats tokens instead), and grids are padded with
zeros to the batch's largest side, so a padded bag gives the same output as the unpadded one.
Token order matters through PPEG: not permutation invariant. ``instance_scores`` = the class token's
attention to each tile in the last layer, as logits (mean over heads) [B, N].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


class TransLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
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
        B, N, d = tokens.shape
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


@register_model("transmil")
class TransMIL(MILModel):
    Args = TransMILArgs
    permutation_invariant = False

    def __init__(self, in_dim: int, n_classes: int = 2, dim: int = 128, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__(in_dim, n_classes)
        self.fc = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layer1 = TransLayer(dim, heads, dropout)
        self.ppeg = PPEG(dim)
        self.layer2 = TransLayer(dim, heads, dropout)
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
