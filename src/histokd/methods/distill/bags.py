"""Bags held in memory for the distillation methods: the container, adapters and padding."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from histokd.data.bags import Bag, BagDataset
from histokd.errors import InputError

log = logging.getLogger("histokd")


@dataclass
class Bags:
    """Bags held in memory: ``features[i]`` [N_i, D] float32, ``labels`` [B] int class indices,
    ``instance_labels[i]`` [N_i] int (-1 unknown) or ``None``; ``classes`` in index order."""

    features: list[torch.Tensor]
    labels: np.ndarray
    instance_labels: list[np.ndarray] | None = None
    classes: list[str] = field(default_factory=lambda: ["negative", "positive"])
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return int(self.features[0].shape[-1])


def _bag_item(item: Any, i: int) -> tuple[Any, Any, Any, str | None]:
    """(features, label, instance labels or None, slide id or None) of one dataset item: a
    :class:`~histokd.data.bags.Bag`, a ``(features, label[, instance_labels])`` tuple or a mapping with
    those keys."""
    if isinstance(item, Bag):
        return item.features, item.label, item.instance_labels, item.slide_id
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        il = item[2] if len(item) > 2 and not isinstance(item[2], str) else None
        return item[0], item[1], il, None
    if isinstance(item, Mapping):
        sid = item.get("slide_id")
        return item.get("features"), item.get("label"), item.get("instance_labels"), None if sid is None else str(sid)
    raise InputError(f"bag {i}: a {type(item).__name__} is not a bag; pass a BagDataset, Bags or "
                     f"(features, label) pairs")


def as_bags(ds: Any, n_classes: int | None = None) -> Bags:
    """Adapt a bag dataset to in-memory :class:`Bags`: a :class:`~histokd.data.bags.BagDataset`, a
    :class:`Bags`, or a sequence of ``(features, label[, instance_labels])`` tuples or mappings with
    ``features``, ``label`` and optionally ``instance_labels`` / ``slide_id``."""
    if isinstance(ds, Bags):
        return ds
    feats: list[torch.Tensor] = []
    labels: list[int] = []
    inst: list[np.ndarray] = []
    ids: list[str] = []
    has_inst = False
    for i in range(len(ds)):
        x, y, il, sid = _bag_item(ds[i], i)
        if sid is not None:
            ids.append(sid)
        if x is None or y is None:
            raise InputError(f"bag {i}: the dataset item has no features/label; pass a BagDataset")
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise InputError(f"bag {i}: features must be [N, D] with N > 0, got {tuple(x.shape)}")
        feats.append(x)
        labels.append(int(np.asarray(y).reshape(-1)[0]))
        if il is not None:
            has_inst = True
            inst.append(np.asarray(il, dtype=np.int64).reshape(-1))
        else:
            inst.append(np.full(x.shape[0], -1, dtype=np.int64))
    classes = list(ds.classes) if isinstance(ds, BagDataset) else None
    if classes is None:
        k = n_classes or max(2, max(labels) + 1 if labels else 2)
        classes = ["negative", "positive"] if k == 2 else [str(c) for c in range(k)]
    return Bags(feats, np.asarray(labels, dtype=np.int64), inst if has_inst else None, list(classes),
                ids if len(ids) == len(feats) else None)


def prepare_bags(train: Any, val: Any, standardize: bool, val_fraction: float,
                 seed: int) -> tuple[Bags, Bags, torch.Tensor | None, torch.Tensor | None]:
    """Training and validation :class:`Bags`, z-scored with training statistics when ``standardize``.

    Without a validation set (``val`` None or empty) a seeded, label-stratified ``val_fraction`` of the
    training bags is held out, because checkpoints and thresholds are always chosen on validation bags.
    """
    tr = as_bags(train)
    if val is None or len(val) == 0:
        rng = np.random.default_rng(seed)
        hold = np.zeros(len(tr), bool)
        for c in np.unique(tr.labels):
            idx = rng.permutation(np.flatnonzero(tr.labels == c))
            hold[idx[: max(1, int(round(val_fraction * len(idx))))] if len(idx) > 1 else []] = True
        log.info("no validation bags given: holding out %d of %d training bags for validation", hold.sum(), len(tr))
        va = subset_bags(tr, np.flatnonzero(hold))
        tr = subset_bags(tr, np.flatnonzero(~hold))
    else:
        va = as_bags(val)
    mean = std = None
    if standardize:
        allx = torch.cat(tr.features)
        mean, std = allx.mean(0), allx.std(0).clamp_min(1e-6)
        tr = Bags([(x - mean) / std for x in tr.features], tr.labels, tr.instance_labels, tr.classes, tr.ids)
        va = Bags([(x - mean) / std for x in va.features], va.labels, va.instance_labels, va.classes, va.ids)
    return tr, va, mean, std


def subset_bags(b: Bags, idx: np.ndarray) -> Bags:
    return Bags([b.features[i] for i in idx], b.labels[idx],
                None if b.instance_labels is None else [b.instance_labels[i] for i in idx], b.classes,
                None if b.ids is None else [b.ids[i] for i in idx])


def pad_bags(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of [N_i, *S] -> padded [B, N_max, *S] and mask [B, N_max] (True = real instance); ``S`` is
    ``(D,)`` for features, ``(3, H, W)`` for tile images."""
    n = max(b.shape[0] for b in bags)
    x = bags[0].new_zeros(len(bags), n, *bags[0].shape[1:])
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, : b.shape[0]] = b
        mask[i, : b.shape[0]] = True
    return x, mask
