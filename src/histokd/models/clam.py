"""CLAM-SB (Lu et al. 2021): single-branch gated attention MIL with instance-level clustering.

h_i = ReLU(W x_i) [B, N, E]; gated attention logits s_i; bag logits = classifier(Σ softmax(s)_i h_i).
The clustering loss (:meth:`loss_extra`): for the bag's class c, the k most- and k least-attended real tiles
are pseudo-labelled positive / negative for the class-c instance classifier (binary CE); with
``subtyping`` (multi-class, mutually exclusive), the k most-attended tiles are also negatives for every
other class's instance classifier. Total loss = (1 - inst_weight)·CE(bag) + inst_weight·clustering
(CLAM's 0.7 / 0.3). ``instance_scores`` = attention logits [B, N].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histokd.config import BaseConfig
from histokd.models.abmil import GatedAttention
from histokd.models.base import MILModel, MILOutput, full_mask, masked_softmax, register_model


class CLAMArgs(BaseConfig):
    embed_dim: int = 256
    attn_dim: int = 128
    dropout: float = 0.25
    k_sample: int = 8
    inst_weight: float = 0.3
    subtyping: bool = False


@register_model("clam-sb")
class CLAMSB(MILModel):
    Args = CLAMArgs

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 2,
        embed_dim: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
        k_sample: int = 8,
        inst_weight: float = 0.3,
        subtyping: bool = False,
    ) -> None:
        super().__init__(in_dim, n_classes)
        self.encoder = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(embed_dim, attn_dim, gated=True, dropout=dropout)
        self.classifier = nn.Linear(embed_dim, n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(embed_dim, 2) for _ in range(n_classes))
        self.k_sample, self.inst_weight, self.subtyping = k_sample, inst_weight, subtyping

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """``x`` [B, N, D] -> bag logits [B, C]; instance scores = attention logits [B, N]."""
        mask = full_mask(x) if mask is None else mask
        h = self.encoder(x)
        s = self.attention(h)
        a = masked_softmax(s, mask)
        z = torch.einsum("bn,bne->be", a, h)
        return MILOutput(self.classifier(z), s, {"attention": a, "embeddings": h, "mask": mask})

    def bag_loss(self, out: MILOutput, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return (1 - self.inst_weight) * F.cross_entropy(out.bag_logits.float(), y, weight=weight)

    def loss_extra(self, out: MILOutput, y: torch.Tensor) -> torch.Tensor | None:
        h, s, mask = out.extras["embeddings"], out.instance_scores, out.extras["mask"]
        losses = []
        for b in range(h.shape[0]):
            valid = mask[b].nonzero().squeeze(1)
            k = min(self.k_sample, len(valid) // 2)
            if k == 0:
                continue
            sb, hb = s[b, valid], h[b, valid]
            top, bottom = sb.topk(k).indices, sb.topk(k, largest=False).indices
            for c, clf in enumerate(self.instance_classifiers):
                if c == int(y[b]):
                    idx = torch.cat([top, bottom])
                    target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(h.device)
                elif self.subtyping:
                    idx, target = top, torch.zeros(k, dtype=torch.long, device=h.device)
                else:
                    continue
                losses.append(F.cross_entropy(clf(hb[idx]).float(), target))
        if not losses:
            return None
        return self.inst_weight * torch.stack(losses).mean()

    @torch.no_grad()
    def instance_logits(self, x: torch.Tensor, mask: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        """Per class c, the log-odds of the class-c instance classifier -> [B, N, C] (softmaxed by callers)."""
        outs = []
        for i in range(0, x.shape[1], chunk):
            h = self.encoder(x[:, i : i + chunk])
            outs.append(torch.stack([(lambda o: o[..., 1] - o[..., 0])(clf(h)) for clf in self.instance_classifiers], -1))
        return torch.cat(outs, 1)
