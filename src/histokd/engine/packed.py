"""Packed bags and stacked models: many small bags, and many models, in one step.

*Packing.* A step's bags are not padded to the largest one: their instances are concatenated into one
tensor ``x`` [T, D] with a segment id per instance (which bag it belongs to), so the instance MLP runs
once over exactly the real instances and the pooling is segment-wise (:func:`segment_softmax`,
:func:`segment_sum`, :func:`segment_max`).

*Stacking.* E independent models of the same architecture (the folds and repeats of a ``bench`` run,
the members of an ensemble) become one :class:`StackedMIL` whose weights carry a leading member axis:
every linear layer is one batched matrix product ``[E, T, in] x [E, in, out]``. Member e sees only its
own bags (its rows of ``x``), its loss is its own mean over its bags, and the total loss is the sum over
members, so no member's gradient depends on another's. The element-wise optimisers of
:mod:`histokd.engine.side_by_side` keep that independence. Members are packed to the same row count
``T`` (the largest member's); the padding rows of a member form an extra segment whose output is
dropped, so they never reach a loss.

A model takes part when it declares a :class:`~histokd.models.base.PackedSpec` (ABMIL, gated ABMIL,
mean and max pooling); :func:`stackable` says whether a model does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from histokd.models.base import MILModel, PackedSpec

#: encoder layers a stacked encoder can hold: linear layers become batched products, the rest are
#: element-wise and apply to a stacked tensor as they are
ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Identity, nn.LeakyReLU, nn.ELU)


def segment_sum(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Sum of ``values`` [M, ...] per segment ``index`` [M] (0..n-1) -> [n, ...]."""
    out = values.new_zeros((n, *values.shape[1:]))
    return out.index_add(0, index, values)


def segment_max(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Max of ``values`` [M, ...] per segment -> [n, ...] (an empty segment gives the dtype's lowest value)."""
    idx = index.reshape(-1, *([1] * (values.dim() - 1))).expand_as(values)
    out = values.new_full((n, *values.shape[1:]), torch.finfo(values.dtype).min)
    return out.scatter_reduce(0, idx, values, "amax", include_self=True)


def segment_softmax(logits: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of ``logits`` [M] within each segment of ``index`` [M] (0..n-1)."""
    top = segment_max(logits.detach(), index, n)  # a shift per segment: the softmax does not change
    e = torch.exp(logits - top[index])
    return e / segment_sum(e, index, n)[index]


#: above this many slots x rows per member, attention pooling sums weighted rows instead of a matrix product
DENSE_POOL_MAX = 1 << 22


def attention_pool(att: torch.Tensor, h: torch.Tensor, seg: torch.Tensor, n_bags: int) -> torch.Tensor:
    """Σ_i a_i h_i per bag slot: ``att`` [E, T], ``h`` [E, T, H], ``seg`` [E, T] -> [E, n_bags + 1, H].

    As one batched product with the attention scattered into an [E, n_bags + 1, T] matrix (no [T, H]
    temporary: a 100,000-tile bag costs a few MB more, not another copy of its embeddings); very many
    slots fall back to a segment sum of the weighted rows."""
    E, T = att.shape
    if (n_bags + 1) * T <= DENSE_POOL_MAX:
        A = att.new_zeros(E, n_bags + 1, T).scatter(1, seg.unsqueeze(1), att.unsqueeze(1))
        return torch.bmm(A.to(h.dtype), h)
    gseg = (seg + torch.arange(E, device=seg.device).unsqueeze(1) * (n_bags + 1)).reshape(-1)
    z = segment_sum((att.unsqueeze(-1) * h).reshape(E * T, -1), gseg, E * (n_bags + 1))
    return z.reshape(E, n_bags + 1, -1)


class StackedLinear(nn.Module):
    """E linear layers as one: weight [E, in, out], bias [E, 1, out]; ``x`` [E, T, in] -> [E, T, out]."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach().t() for m in layers]).contiguous())
        has_bias = layers[0].bias is not None
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]).unsqueeze(1)) if has_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias, x, self.weight)

    def member(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``e``'s layer alone on its rows ``x`` [T, in] -> [T, out]."""
        if self.bias is None:
            return x @ self.weight[e]
        return torch.addmm(self.bias[e, 0], x, self.weight[e])

    @torch.no_grad()
    def write_back(self, layers: Sequence[nn.Linear]) -> None:
        for e, m in enumerate(layers):
            m.weight.copy_(self.weight[e].t())
            if self.bias is not None:
                m.bias.copy_(self.bias[e, 0])


def _stack_sequential(seqs: Sequence[nn.Sequential]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for parts in zip(*seqs):
        first = parts[0]
        if isinstance(first, nn.Linear):
            layers.append(StackedLinear(parts))  # type: ignore[arg-type]
        else:
            layers.append(first)  # element-wise (checked by stackable): one copy serves every member
    return nn.Sequential(*layers)


def _spec_ok(spec: PackedSpec | None) -> bool:
    if spec is None:
        return False
    return all(isinstance(m, (nn.Linear, *ELEMENTWISE)) for m in spec.encoder)


def stackable(model: MILModel) -> bool:
    """True when ``model`` declares a packed form whose encoder holds only linear and element-wise layers."""
    return _spec_ok(model.packed_spec())


class StackedMIL(nn.Module):
    """E models of one architecture (each with a :class:`PackedSpec`) trained and predicted as one."""

    def __init__(self, models: Sequence[MILModel]) -> None:
        super().__init__()
        specs = [m.packed_spec() for m in models]
        if not specs or not all(_spec_ok(s) for s in specs):
            raise ValueError("StackedMIL: every model needs a packed spec of linear and element-wise layers")
        kinds = {(s.pooling, s.attention is not None, s.gate is not None, len(s.encoder)) for s in specs}  # type: ignore[union-attr]
        if len(kinds) != 1:
            raise ValueError("StackedMIL: the models differ in architecture")
        self.models, self.specs = list(models), specs
        self.n_members, self.n_classes = len(models), models[0].n_classes
        s0 = specs[0]
        self.pooling = s0.pooling  # type: ignore[union-attr]
        self.encoder = _stack_sequential([s.encoder for s in specs])  # type: ignore[union-attr]
        self.classifier = StackedLinear([s.classifier for s in specs])  # type: ignore[union-attr]
        self.V = StackedLinear([s.attention for s in specs]) if s0.attention is not None else None  # type: ignore[misc,union-attr]
        self.U = StackedLinear([s.gate for s in specs]) if s0.gate is not None else None  # type: ignore[misc,union-attr]
        self.w = StackedLinear([s.attention_out for s in specs]) if s0.attention_out is not None else None  # type: ignore[misc,union-attr]
        self.attn_drop = s0.attention_dropout if s0.attention_dropout is not None else nn.Identity()  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor | list[torch.Tensor], seg: torch.Tensor | list[torch.Tensor],
                n_bags: int) -> torch.Tensor:
        """Bag logits [E, n_bags, C] of packed rows: ``x`` [E, T, D] with ``seg`` [E, T] (each row's bag slot;
        ``n_bags`` on padding rows), or *ragged*: ``x`` a list of each member's [T_e, D] rows with ``seg`` a
        list of [T_e] slots (no padding; each member's layers run on its own rows)."""
        if isinstance(x, list):
            return self._forward_ragged(x, seg, n_bags)  # type: ignore[arg-type]
        E, T = seg.shape  # type: ignore[union-attr]
        h = self.encoder(x)
        gseg = (seg + torch.arange(E, device=seg.device).unsqueeze(1) * (n_bags + 1)).reshape(-1)  # type: ignore[union-attr]
        n_seg = E * (n_bags + 1)
        if self.pooling == "attention":
            a = torch.tanh(self.V(h))  # type: ignore[misc]
            if self.U is not None:
                a = a * torch.sigmoid(self.U(h))
            s = self.w(self.attn_drop(a)).reshape(-1).float()  # type: ignore[misc]  (softmax in fp32 under bf16)
            att = segment_softmax(s, gseg, n_seg).reshape(E, T)
            return self.classifier(attention_pool(att, h, seg, n_bags))[:, :n_bags]  # type: ignore[arg-type]
        return self._pool_instances(self.classifier(h).reshape(E * T, -1).float(), gseg, E, n_bags)

    def _pool_instances(self, inst: torch.Tensor, gseg: torch.Tensor, E: int, n_bags: int) -> torch.Tensor:
        """Mean or max of instance logits [M, C] per (member, slot) segment -> [E, n_bags, C]."""
        n_seg = E * (n_bags + 1)
        if self.pooling == "mean":
            count = segment_sum(inst.new_ones(len(inst)), gseg, n_seg).clamp_min(1.0)
            pooled = segment_sum(inst, gseg, n_seg) / count.unsqueeze(-1)
        else:
            pooled = segment_max(inst, gseg, n_seg)
        return pooled.reshape(E, n_bags + 1, -1)[:, :n_bags]

    def _forward_ragged(self, xs: list[torch.Tensor], segs: list[torch.Tensor], n_bags: int) -> torch.Tensor:
        E = len(xs)
        hs, outs = [], []
        for e, x in enumerate(xs):
            h = x
            for layer in self.encoder:
                h = layer.member(e, h) if isinstance(layer, StackedLinear) else layer(h)
            if self.pooling == "attention":
                a = torch.tanh(self.V.member(e, h))  # type: ignore[union-attr]
                if self.U is not None:
                    a = a * torch.sigmoid(self.U.member(e, h))
                outs.append(self.w.member(e, self.attn_drop(a)).squeeze(-1))  # type: ignore[union-attr]
            else:
                outs.append(self.classifier.member(e, h))
            hs.append(h)
        gseg = torch.cat([sg + e * (n_bags + 1) for e, sg in enumerate(segs)])
        n_seg = E * (n_bags + 1)
        if self.pooling != "attention":
            return self._pool_instances(torch.cat(outs).float(), gseg, E, n_bags)
        att = segment_softmax(torch.cat(outs).float(), gseg, n_seg)
        z = segment_sum(att.unsqueeze(-1) * torch.cat(hs).to(att.dtype), gseg, n_seg)
        return self.classifier(z.reshape(E, n_bags + 1, -1).to(hs[0].dtype))[:, :n_bags]

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the stacked weights into the member models (each then works on its own)."""
        stacked = [m for m in self.encoder if isinstance(m, StackedLinear)]
        for k, layer in enumerate(stacked):
            layer.write_back([[m for m in s.encoder if isinstance(m, nn.Linear)][k] for s in self.specs])  # type: ignore[union-attr]
        self.classifier.write_back([s.classifier for s in self.specs])  # type: ignore[union-attr]
        for mine, name in ((self.V, "attention"), (self.U, "gate"), (self.w, "attention_out")):
            if mine is not None:
                mine.write_back([getattr(s, name) for s in self.specs])
