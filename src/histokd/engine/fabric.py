"""Lightning Fabric set-up: accelerator, devices/nodes/strategy, precision, seeding, determinism."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch

from histokd.engine import runtime
from histokd.engine.config import TrainerConfig


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (all devices); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        deterministic_kernels()
        torch.backends.cudnn.benchmark = False


def deterministic_kernels() -> None:
    """What ``torch.use_deterministic_algorithms(True, warn_only=True)`` does, without the ~0.8 s it spends
    importing ``torch._inductor`` to set the compiler's copy of the flag: the compiler's flag is set only
    where the compiler is already imported (histokd never compiles). A short run's whole process is a few
    seconds, so that import was a fifth of it."""
    if sys.modules.get("torch._inductor.config") is not None:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)
    # deterministic mode also fills every new tensor with NaN, a debugging aid that catches reads of
    # uninitialised memory and changes no result; on a CPU step of small products it was a seventh of the time
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]


def resolve_precision(cfg: TrainerConfig) -> str:
    """The Fabric loop's precision (:func:`histokd.engine.runtime.resolve_precision`; ``auto`` on a CPU: fp32)."""
    on_cuda = cfg.accelerator in ("cuda", "gpu", "auto") and torch.cuda.is_available()
    return runtime.resolve_precision(cfg.precision, "cuda" if on_cuda else "cpu")


def make_fabric(cfg: TrainerConfig):  # noqa: ANN201 - lightning_fabric.Fabric
    """A Fabric for ``cfg`` (not launched). Multi-process strategies need ``fabric.launch(fn)``."""
    from lightning_fabric import Fabric

    return Fabric(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=resolve_precision(cfg),  # type: ignore[arg-type]
    )
