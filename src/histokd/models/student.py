"""Instance students and the shared projection encoder (WENO, Distill-to-Label).

- :class:`ProjectionEncoder`: the "shared trainable encoder" of WENO on frozen features:
  ``Linear(D, E) + BatchNorm1d(E) (+ ReLU)``, applied to every instance. Batch statistics are taken
  over real instances only, so padding never leaks into them.
- :class:`InstanceHead`: an MLP instance classifier ``[..., D] -> [..., C]`` logits, i.e. the student
  that labels one tile without its bag.

Both are plain ``nn.Module``s (no training code).
"""

from __future__ import annotations

import torch
from torch import nn


class ProjectionEncoder(nn.Module):
    """``x [..., D] -> z [..., E]``; with ``mask`` ``[...]`` bool, BatchNorm sees only real instances.

    ``E = out_dim``; ``relu=False`` gives the authors' Linear+BN (no non-linearity).
    """

    def __init__(self, in_dim: int, out_dim: int = 256, batch_norm: bool = True, relu: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.BatchNorm1d(out_dim) if batch_norm else nn.Identity()
        self.act = nn.ReLU() if relu else nn.Identity()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        if mask is None:
            z = self._encode(flat)
        else:
            keep = mask.reshape(-1)
            enc = self._encode(flat[keep])
            z = enc.new_zeros(flat.shape[0], self.out_dim)  # the encoding's dtype (bf16 under autocast)
            z[keep] = enc
        return z.reshape(*lead, self.out_dim)

    def _encode(self, flat: torch.Tensor) -> torch.Tensor:
        z = self.linear(flat)
        if isinstance(self.norm, nn.BatchNorm1d) and self.training and flat.shape[0] < 2:
            # BatchNorm cannot estimate a variance from one instance: use the running statistics.
            z = nn.functional.batch_norm(z, self.norm.running_mean, self.norm.running_var,
                                         self.norm.weight, self.norm.bias, training=False,
                                         eps=self.norm.eps)
        else:
            z = self.norm(z)
        return self.drop(self.act(z))


class InstanceHead(nn.Module):
    """MLP student ``[..., D] -> [..., C]`` instance logits.

    ``hidden`` gives the width of each hidden layer (``()`` = a linear classifier). WENO's authors use
    two 4096-wide layers on 1024-d inputs; we default to one 256-wide layer, enough for frozen tile
    features on a CPU.
    """

    def __init__(self, in_dim: int, n_classes: int = 2, hidden: tuple[int, ...] = (256,),
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
