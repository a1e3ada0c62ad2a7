"""CHOWDER (Courtiol et al. 2018): tile scores, top-R / bottom-R "MinMax" selection, MLP, ensemble.

Each ensemble member: a linear tile scorer (the paper's 1-D convolution with kernel = stride = D) gives one
score per tile s_i [B, N]; the R highest and R lowest *real* tiles (padding masked out) are concatenated
into a 2R vector and fed to an MLP 2R -> 200 -> 100 -> C with sigmoid activations and dropout. The loss
is each member's cross-entropy (members are independent models trained side by side from different
initialisations, as the paper's E seeds) plus ``l2`` · ||w_scorer||² (:meth:`loss_extra`). The ensemble
prediction averages the members' probabilities; the heatmap is the members' mean tile score.

A bag with fewer than R tiles repeats its last selected score (its smallest top / largest bottom score),
so a bag of one tile is well defined and padding never enters the selection.

Orientation of the heatmap: the MinMax layer + MLP can use low tile scores as tumour evidence just as well
as high ones (the loss does not identify the scorer's sign), so after training :meth:`Chowder.after_fit`
orients each member's scores with the MIL assumption on the *training* bags: positive bags contain
positive tiles, negative bags none, so the witnesses sit at the extreme of positive bags only. With
m_top / m_bot the mean of a bag's R highest / lowest scores, scaled by the spread of all scores,
d_top = mean_pos(m_top) - mean_neg(m_top) and d_bot = mean_neg(m_bot) - mean_pos(m_bot): if the extremes of
positive bags differ from negatives' more at the bottom than at the top (d_bot > d_top), the member's
scores are reported negated (buffer ``score_sign``). Data rather than the MLP's own slope: on a small
cohort the scorer learns a direction long before the sigmoid MLP leaves its flat start, and a slope read
from an untrained MLP is noise. Bag predictions are untouched; only ``instance_scores`` change sign.
The test split never decides the direction.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from histokd.config import BaseConfig
from histokd.models.base import MILModel, MILOutput, full_mask, register_model


def extreme_scores(s: torch.Tensor, mask: torch.Tensor, r: int) -> torch.Tensor:
    """``s`` [B, N] tile scores -> [B, 2R]: R highest (descending) then R lowest (ascending) real scores."""
    n_valid = mask.sum(1, keepdim=True).clamp_min(1)  # [B, 1]
    k = min(r, s.shape[1])
    top = s.masked_fill(~mask, float("inf") * -1).topk(k, dim=1).values
    bot = s.masked_fill(~mask, float("inf")).topk(k, dim=1, largest=False).values
    if k < r:  # fewer tiles than R in every bag of the batch: pad with the last slot, fixed below
        top = torch.cat([top, top[:, -1:].expand(-1, r - k)], 1)
        bot = torch.cat([bot, bot[:, -1:].expand(-1, r - k)], 1)
    # slots beyond a bag's own tile count are repeats of its last real slot
    slot = torch.arange(r, device=s.device).unsqueeze(0)
    idx = torch.minimum(slot, n_valid - 1)
    return torch.cat([top.gather(1, idx), bot.gather(1, idx)], 1)


class ChowderMember(nn.Module):
    def __init__(self, in_dim: int, n_classes: int, r: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        self.r = r
        self.scorer = nn.Linear(in_dim, 1)  # == Conv1d(1, 1, kernel=D, stride=D) on the flattened bag
        layers: list[nn.Module] = []
        d = 2 * r
        for h in hidden:
            layers += [nn.Linear(d, h), nn.Sigmoid(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, n_classes))
        self.mlp = nn.Sequential(*layers)
        for m in self.modules():  # Xavier, as the Owkin variant
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scorer(x).squeeze(-1)
        return self.mlp(extreme_scores(s, mask, self.r)), s


class ChowderArgs(BaseConfig):
    r: int = 5
    hidden: list[int] = [200, 100]
    dropout: float = 0.5
    l2: float = 0.5  # λ on the scorer weights (paper value)
    n_ensemble: int = 1  # E members (the paper uses 50)


@register_model("chowder")
class Chowder(MILModel):
    Args = ChowderArgs

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 2,
        r: int = 5,
        hidden: list[int] = [200, 100],  # noqa: B006
        dropout: float = 0.5,
        l2: float = 0.5,
        n_ensemble: int = 1,
    ) -> None:
        super().__init__(in_dim, n_classes)
        self.l2 = l2
        self.members = nn.ModuleList(ChowderMember(in_dim, n_classes, r, hidden, dropout) for _ in range(n_ensemble))
        self.register_buffer("score_sign", torch.ones(n_ensemble))  # +-1 per member, set by after_fit

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """``x`` [B, N, D] -> bag logits [B, C] (log of the members' mean probability); tile scores [B, N]."""
        mask = full_mask(x) if mask is None else mask
        logits, scores = zip(*(m(x, mask) for m in self.members))
        member_logits = torch.stack(logits)  # [E, B, C]
        probs = torch.softmax(member_logits.float(), -1).mean(0)
        bag = torch.log(probs.clamp_min(1e-12))
        oriented = torch.stack(scores) * self.score_sign.view(-1, 1, 1).to(x.dtype)  # [E, B, N]
        return MILOutput(bag, oriented.mean(0), {"member_logits": member_logits})

    @torch.no_grad()
    def after_fit(self, bags: Iterable[tuple[torch.Tensor, int]], positive: int) -> None:
        """Orient each member's tile scores so that high = positive class (see the module docstring)."""
        was_training = self.training
        self.eval()
        tops: list[torch.Tensor] = []  # per bag [E]
        bots: list[torch.Tensor] = []
        pos: list[bool] = []
        spread = torch.zeros(len(self.members), dtype=torch.float64)
        for x, label in bags:
            xb = x.detach().float().cpu().unsqueeze(0)
            s = torch.stack([m.scorer(xb).squeeze(-1)[0] for m in self.members]).double()  # [E, N]
            k = min(self.members[0].r, s.shape[1])
            tops.append(s.topk(k, 1).values.mean(1))
            bots.append(s.topk(k, 1, largest=False).values.mean(1))
            spread += s.std(1, unbiased=False) if s.shape[1] > 1 else 0
            pos.append(label == positive)
        self.train(was_training)
        is_pos = torch.tensor(pos)
        if not is_pos.any() or is_pos.all():
            return  # one class only: nothing to orient against
        top, bot = torch.stack(tops), torch.stack(bots)  # [n_bags, E]
        scale = (spread / len(pos)).clamp_min(1e-12)
        d_top = (top[is_pos].mean(0) - top[~is_pos].mean(0)) / scale
        d_bot = (bot[~is_pos].mean(0) - bot[is_pos].mean(0)) / scale
        self.score_sign.copy_(torch.where(d_bot > d_top, -1.0, 1.0).to(self.score_sign))

    def bag_loss(self, out: MILOutput, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        ml = out.extras["member_logits"].float()
        E = ml.shape[0]
        return F.cross_entropy(ml.reshape(-1, ml.shape[-1]), y.repeat(E), weight=weight)

    def loss_extra(self, out: MILOutput, y: torch.Tensor) -> torch.Tensor | None:
        if self.l2 <= 0:
            return None
        return self.l2 * sum(m.scorer.weight.pow(2).sum() for m in self.members) / len(self.members)


