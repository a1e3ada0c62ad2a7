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

import math
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


class _MemberLinear:
    """One member's slice of a :class:`StackedLinear`: ``x`` [T, in] -> [T, out]."""

    __slots__ = ("weight", "bias")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return x @ self.weight
        return torch.addmm(self.bias, x, self.weight)


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

    def members(self, dtype: torch.dtype | None = None) -> list["_MemberLinear"]:
        """Every member's layer alone (:class:`_MemberLinear`), split from the stacked weights in one ``unbind``
        (so a backward pass gathers the members' gradients in one stack, not E zero-filled copies of the
        whole weight), cast once to ``dtype`` (the autocast dtype) when given."""
        w = self.weight if dtype is None else self.weight.to(dtype)
        ws = w.unbind(0)
        if self.bias is None:
            return [_MemberLinear(we, None) for we in ws]
        b = (self.bias if dtype is None else self.bias.to(dtype))[:, 0]
        return [_MemberLinear(we, be) for we, be in zip(ws, b.unbind(0))]

    @torch.no_grad()
    def write_back(self, layers: Sequence[nn.Linear]) -> None:
        for e, m in enumerate(layers):
            m.weight.copy_(self.weight[e].t())
            if self.bias is not None:
                m.bias.copy_(self.bias[e, 0])


def keep_mask(shape: Sequence[int], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A boolean keep-mask of ``shape``: each element kept with probability 1 - ``p``, from 8 random bits per
    element where ``p`` is a multiple of 1/256 (0.25, 0.5, ...; exact), else 16 (``p`` to 1/65,536). The bits
    come 64 at a time from torch's generator (seeded by ``torch.manual_seed`` as ``nn.Dropout`` is), several
    times faster on a CPU than per-element Bernoulli draws."""
    n = math.prod(shape)
    if abs(p * 256 - round(p * 256)) < 1e-9:
        words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device).random_(-2**63, None)
        return words.view(torch.uint8)[:n].view(*shape) >= round(p * 256)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)
    return words.view(torch.int16)[:n].view(*shape) >= (-32768 + round(p * 65536))


class MaskDropout(nn.Module):
    """Inverted dropout (as ``nn.Dropout``: zero with probability ``p``, scale the rest by 1 / (1 - p), identity
    in eval mode) with the mask of :func:`keep_mask`. The stacked engine's dropout: on the packed rows of a
    CPU step, ``nn.Dropout``'s Bernoulli draws cost more than the matrix products they follow."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0.0:
            return x
        if self.p >= 1.0:
            return x * 0.0
        scale = keep_mask(x.shape, self.p, x.device).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _elementwise(layer: nn.Module) -> nn.Module:
    """The stacked engine's copy of an element-wise layer (dropout becomes :class:`MaskDropout`)."""
    return MaskDropout(layer.p) if isinstance(layer, nn.Dropout) else layer


def _stack_sequential(seqs: Sequence[nn.Sequential]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for parts in zip(*seqs):
        first = parts[0]
        if isinstance(first, nn.Linear):
            layers.append(StackedLinear(parts))  # type: ignore[arg-type]
        else:
            layers.append(_elementwise(first))  # element-wise (checked by stackable): one copy serves every member
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
        self.attn_drop = _elementwise(s0.attention_dropout) if s0.attention_dropout is not None else nn.Identity()  # type: ignore[union-attr]

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
        dev = xs[0].device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        enc = [layer.members(dtype) if isinstance(layer, StackedLinear) else layer for layer in self.encoder]
        V, U, w, cls = (m.members(dtype) if m is not None else None for m in (self.V, self.U, self.w, self.classifier))
        hs, outs = [], []
        for e, x in enumerate(xs):
            h = x if dtype is None else x.to(dtype)
            for layer in enc:
                h = layer[e](h) if isinstance(layer, list) else layer(h)
            if self.pooling == "attention":
                a = torch.tanh(V[e](h))  # type: ignore[index]
                if U is not None:
                    a = a * torch.sigmoid(U[e](h))
                outs.append(w[e](self.attn_drop(a)).squeeze(-1))  # type: ignore[index]
            else:
                outs.append(cls[e](h))  # type: ignore[index]
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
