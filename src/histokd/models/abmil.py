"""Attention-based deep MIL (Ilse, Tomczak, Welling 2018), plain and gated attention.

instance MLP h_i = f(x_i) [B, N, E]; attention logit s_i = w^T (tanh(V h_i) ⊙ sigm(U h_i)) (the gate only
when ``gated``); a = masked softmax(s); z = Σ a_i h_i; bag logits = classifier(z). ``instance_scores``
are the pre-softmax attention logits s_i: unlike the weights they do not shrink with bag size, so they are
comparable across slides (the heatmap). Large bags are processed in chunks under gradient
checkpointing (``chunk_size``), so a 100k-tile bag trains in well under 2 GB.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from histokd.config import BaseConfig
from histokd.models.base import MILModel, MILOutput, full_mask, masked_softmax, mlp, register_model


class GatedAttention(nn.Module):
    """Attention scorer ``h [.., E] -> logits [..]`` (Ilse et al.; ``gated`` adds the sigmoid gate)."""

    def __init__(self, in_dim: int, attn_dim: int = 128, gated: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.V = nn.Linear(in_dim, attn_dim)
        self.U = nn.Linear(in_dim, attn_dim) if gated else None
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.w = nn.Linear(attn_dim, 1, bias=False)  # softmax is shift-invariant: a bias gets no gradient

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = torch.tanh(self.V(h))
        if self.U is not None:
            a = a * torch.sigmoid(self.U(h))
        return self.w(self.drop(a)).squeeze(-1)


class ABMILArgs(BaseConfig):
    hidden: list[int] = [256, 128]  # instance MLP widths (ReLU + dropout after each)
    attn_dim: int = 128
    gated: bool = False
    dropout: float = 0.25
    attn_dropout: float = 0.0
    chunk_size: int = 16384  # instances per checkpointed chunk when a bag is larger (training only)


@register_model("abmil")
class ABMIL(MILModel):
    Args = ABMILArgs

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 2,
        hidden: list[int] = [256, 128],  # noqa: B006
        attn_dim: int = 128,
        gated: bool = False,
        dropout: float = 0.25,
        attn_dropout: float = 0.0,
        chunk_size: int = 16384,
    ) -> None:
        super().__init__(in_dim, n_classes)
        self.encoder, self.embed_dim = mlp(in_dim, hidden, dropout)
        self.attention = GatedAttention(self.embed_dim, attn_dim, gated, attn_dropout)
        self.classifier = nn.Linear(self.embed_dim, n_classes)
        self.chunk_size = chunk_size

    def _embed_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.attention(h)

    def embed_and_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, N, D] -> embeddings [B, N, E], attention logits [B, N]; chunked + checkpointed if large."""
        N = x.shape[1]
        if N <= self.chunk_size:
            return self._embed_score(x)
        parts = []
        for i in range(0, N, self.chunk_size):
            xi = x[:, i : i + self.chunk_size]
            if torch.is_grad_enabled():
                parts.append(checkpoint(self._embed_score, xi, use_reentrant=False))
            else:
                parts.append(self._embed_score(xi))
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """``x`` [B, N, D], ``mask`` [B, N] -> bag logits [B, C]; instance scores = attention logits [B, N]."""
        mask = full_mask(x) if mask is None else mask
        h, s = self.embed_and_score(x)
        a = masked_softmax(s, mask)
        z = torch.einsum("bn,bne->be", a, h)
        return MILOutput(self.classifier(z), s, {"attention": a})

    @torch.no_grad()
    def instance_logits(self, x: torch.Tensor, mask: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        # a bag of one has attention weight 1, so the singleton-bag logit is classifier(h_i)
        return torch.cat([self.classifier(self.encoder(x[:, i : i + chunk])) for i in range(0, x.shape[1], chunk)], 1)


@register_model("gated-abmil")
class GatedABMIL(ABMIL):
    """ABMIL with gated attention on by default."""

    class Args(ABMILArgs):
        gated: bool = True

    def __init__(self, in_dim: int, n_classes: int = 2, **kw: object) -> None:
        kw.setdefault("gated", True)
        super().__init__(in_dim, n_classes, **kw)  # type: ignore[arg-type]
