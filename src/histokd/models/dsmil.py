"""DSMIL (Li, Li, Eliceiri 2021): dual-stream MIL.

Stream 1: an instance classifier gives instance logits c_i [B, N, C]; per class, the critical instance m_c
is the one with the highest logit (padding excluded). Stream 2: queries q_i = tanh(Wq h_i), values v_i;
attention A_ic = softmax_i(<q_i, q_{m_c}> / sqrt(d)); bag embedding b_c = Σ_i A_ic v_i [B, C, E]; a
Conv1d with kernel E maps it to bag logits [B, C]. The loss is ½ CE(bag stream) + ½ CE(max-instance
stream) and the prediction averages the two streams' logits. ``instance_scores`` are the instance
classifier's logits [B, N, C] (comparable across bags, unlike the per-bag attention, kept in extras).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from histokd.config import BaseConfig
from histokd.models.base import MILModel, MILOutput, full_mask, masked_max, masked_softmax, mlp, register_model


class DSMILArgs(BaseConfig):
    hidden: list[int] = [256]  # instance embedding MLP
    q_dim: int = 128
    dropout: float = 0.25
    stream_weight: float = 0.5  # weight of the bag stream in loss and prediction


@register_model("dsmil")
class DSMIL(MILModel):
    Args = DSMILArgs

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 2,
        hidden: list[int] = [256],  # noqa: B006
        q_dim: int = 128,
        dropout: float = 0.25,
        stream_weight: float = 0.5,
    ) -> None:
        super().__init__(in_dim, n_classes)
        self.encoder, e = mlp(in_dim, hidden, dropout)
        self.instance_classifier = nn.Linear(e, n_classes)
        self.q = nn.Sequential(nn.Linear(e, q_dim), nn.Tanh())
        self.v = nn.Sequential(nn.Dropout(dropout), nn.Linear(e, e))
        self.fcc = nn.Conv1d(n_classes, n_classes, kernel_size=e)
        self.stream_weight = stream_weight

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """``x`` [B, N, D] -> bag logits [B, C]; instance scores = instance logits [B, N, C]."""
        mask = full_mask(x) if mask is None else mask
        h = self.encoder(x)
        c = self.instance_classifier(h)  # [B, N, C]
        crit = c.masked_fill(~mask.unsqueeze(-1), torch.finfo(c.dtype).min).argmax(1)  # [B, C]
        q = self.q(h)  # [B, N, Q]
        q_m = q.gather(1, crit.unsqueeze(-1).expand(-1, -1, q.shape[-1]))  # [B, C, Q]
        s = torch.einsum("bnq,bcq->bnc", q, q_m) / math.sqrt(q.shape[-1])
        a = masked_softmax(s, mask.unsqueeze(-1), dim=1)  # [B, N, C]
        bag_emb = torch.einsum("bnc,bne->bce", a, self.v(h))
        bag_stream = self.fcc(bag_emb).squeeze(-1)  # [B, C]
        max_stream = masked_max(c, mask)  # [B, C]
        w = self.stream_weight
        logits = w * bag_stream + (1 - w) * max_stream
        return MILOutput(logits, c, {"attention": a, "bag_stream": bag_stream, "max_stream": max_stream})

    def bag_loss(self, out: MILOutput, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        w = self.stream_weight
        return w * F.cross_entropy(out.extras["bag_stream"].float(), y, weight=weight) + (1 - w) * F.cross_entropy(
            out.extras["max_stream"].float(), y, weight=weight
        )

    @torch.no_grad()
    def instance_logits(self, x: torch.Tensor, mask: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        return torch.cat(
            [self.instance_classifier(self.encoder(x[:, i : i + chunk])) for i in range(0, x.shape[1], chunk)], 1
        )
