"""Training helpers shared by the distillation methods: BatchNorm statistics, the student's minibatch
schedule (torch threads: :func:`histokd.engine.runtime.torch_threads`)."""

from __future__ import annotations

import torch
from torch import nn


def student_schedule(m: int, batch: int, min_steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Minibatches of instance indices for one student pass: shuffled passes over all ``m`` training
    instances, repeated until there are at least ``min_steps`` steps (small cohorts would otherwise give
    the student one or two steps per epoch while the teacher gets one per bag)."""
    out: list[torch.Tensor] = []
    while True:
        perm = torch.randperm(m, generator=gen)
        out += [perm[s : s + batch] for s in range(0, m, batch)]
        if len(out) >= min_steps:
            return out


@torch.no_grad()
def refresh_batchnorm(enc: nn.Module, x: torch.Tensor, gen: torch.Generator, n: int = 8192, batch: int = 512) -> None:
    """Set the BatchNorm running statistics of ``enc`` to those of up to ``n`` random instances of ``x``."""
    bns = [m for m in enc.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was = enc.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the refresh batches
    enc.train()
    idx = torch.randperm(len(x), generator=gen)[:n]
    for s in range(0, len(idx), batch):
        j = idx[s : s + batch]
        if len(j) >= 2:
            enc(x[j])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    enc.train(was)


def bn_eval(enc: nn.Module) -> None:
    """Put the BatchNorm layers of ``enc`` in eval mode (use running statistics, do not update them)."""
    for m in enc.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def mods_train(mods: dict[str, nn.Module]) -> None:
    for m in mods.values():
        m.train()
