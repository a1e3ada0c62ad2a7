"""Planted toy bags shared by the distillation tests."""

import numpy as np
import torch

from histokd.methods.distill.bags import Bags


def planted_bags(n_bags: int, seed: int, d: int = 16, shift: float = 4.0) -> Bags:
    """Gaussian instances; positives shifted along one planted direction; every other bag positive."""
    rng = np.random.default_rng(seed)
    feats, labels, inst = [], [], []
    for b in range(n_bags):
        n = int(rng.integers(8, 20))
        y = b % 2
        il = np.zeros(n, dtype=np.int64)
        if y:
            il[rng.choice(n, int(rng.integers(1, n // 3 + 1)), replace=False)] = 1
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[:, 0] += shift * il
        feats.append(torch.from_numpy(x))
        labels.append(y)
        inst.append(il)
    return Bags(feats, np.asarray(labels), inst)
