"""Attention-based deep MIL (Ilse, Tomczak, Welling 2018), plain and gated attention.

instance MLP h_i = f(x_i) [B, N, E]; attention logit s_i = w^T (tanh(V h_i) ⊙ sigm(U h_i)) (the gate only
when ``gated``); a = masked softmax(s); z = Σ a_i h_i; bag logits = classifier(z). ``instance_scores``
are the pre-softmax attention logits s_i: unlike the weights they do not shrink with bag size, so they are
comparable across slides (the heatmap). Large bags are processed in chunks under gradient
checkpointing (``chunk_size``), so a 100k-tile bag trains in well under 2 GB.

``n_ensemble`` = E > 1 makes a deep ensemble: E independently initialised ABMILs, each trained on its own
cross-entropy (the loss is the sum, so no member sees another's gradient); the bag output is the log of
the members' mean class probability and the instance scores are the mean of the members' attention logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from histokd.config import BaseConfig
from histokd.models.base import MILModel, MILOutput, PackedSpec, full_mask, masked_softmax, mlp, register_model


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
    n_ensemble: int = 1  # E > 1: deep ensemble of E independently initialised members (module docstring)


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
        n_ensemble: int = 1,
    ) -> None:
        super().__init__(in_dim, n_classes)
        if n_ensemble < 1:
            raise ValueError(f"n_ensemble must be >= 1, got {n_ensemble}")
        if n_ensemble > 1:  # members hold the weights; this module only combines them
            self.members = nn.ModuleList(
                ABMIL(in_dim, n_classes, hidden, attn_dim, gated, dropout, attn_dropout, chunk_size)
                for _ in range(n_ensemble)
            )
            return
        self.members = None
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
        if N <= self.chunk_size or len(self.encoder) == 0:  # no instance MLP: nothing big to recompute
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
        if self.members is not None:
            outs = [m(x, mask) for m in self.members]
            member_logits = torch.stack([o.bag_logits for o in outs])  # [E, B, C]
            probs = torch.softmax(member_logits.float(), -1).mean(0)
            scores = torch.stack([o.instance_scores for o in outs]).mean(0)
            return MILOutput(torch.log(probs.clamp_min(1e-12)).to(x.dtype), scores, {"member_logits": member_logits})
        h, s = self.embed_and_score(x)
        a = masked_softmax(s, mask)
        z = torch.einsum("bn,bne->be", a, h)
        return MILOutput(self.classifier(z), s, {"attention": a})

    def packed_spec(self) -> PackedSpec | None:
        if self.members is not None:  # an ensemble trains its members side by side as separate models
            return None
        att = self.attention
        return PackedSpec(self.encoder, self.classifier, "attention", att.V, att.U, att.w, att.drop)

    def bag_loss(self, out: MILOutput, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if self.members is None:
            return super().bag_loss(out, y, weight)
        ml = out.extras["member_logits"].float()  # each member fits the labels on its own
        return F.cross_entropy(ml.reshape(-1, ml.shape[-1]), y.repeat(ml.shape[0]), weight=weight) * ml.shape[0]

    @torch.no_grad()
    def instance_logits(self, x: torch.Tensor, mask: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        if self.members is not None:
            probs = torch.stack([torch.softmax(m.instance_logits(x, mask, chunk).float(), -1) for m in self.members])
            return torch.log(probs.mean(0).clamp_min(1e-12)).to(x.dtype)
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
