"""Where and how a training stage runs: accelerator, devices, precision, CPU threads. One owner for each.

Every method's config carries a :class:`RuntimeConfig`: the plain MIL methods and Distill-to-Label through
their ``train`` block (:class:`~histokd.engine.config.TrainerConfig` extends it), WENO and IFKD through
``runtime``, ``histokd train-encoder`` through its own flags. ``histokd train --accelerator / --devices /
--num-nodes / --strategy / --precision`` set the same fields for every method (``pipeline.train.build_config``).

What each field means, the same for every stage:

- ``precision`` (:func:`resolve_precision`): ``32-true`` (fp32), ``bf16-mixed`` (autocast to bfloat16 for
  the forward pass; weights, optimiser state and losses stay fp32) or ``16-mixed`` (CUDA only). ``auto`` is
  bf16-mixed on a CUDA GPU with bf16 (else 16-mixed), and on a CPU the stage's own choice (``cpu_auto``):
  bf16-mixed for the packed MIL engine on a CPU with native bf16 (:func:`native_bf16`, measured in
  docs/mil.md), fp32 for the other stages (their figures were measured in fp32).
- ``accelerator`` / ``devices`` / ``num_nodes`` / ``strategy``: the bag-batch loop of the plain MIL teachers
  and the Distill-to-Label teacher runs them through Lightning Fabric (CPU, CUDA, MPS, multi-device DDP).
  The epoch loops of the other stages (:func:`histokd.engine.fit_epochs`) run in one CPU process:
  :func:`single_process` accepts exactly that and refuses anything else with one line, in one place.
- CPU threads (:func:`torch_threads`): a block runs with ``n`` torch threads, restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from histokd.config import BaseConfig
from histokd.errors import InputError

PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true", "64-true", "64")


class RuntimeConfig(BaseConfig):
    """Accelerator, devices and precision of a training stage (see the module docstring)."""

    accelerator: str = "auto"  # cpu | cuda | mps | auto
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...
    precision: str = "auto"  # auto | 32-true | bf16-mixed | 16-mixed (resolve_precision)


def native_bf16() -> bool:
    """True on a CPU with bfloat16 matrix instructions (AVX512-BF16 or AMX), where bf16 products run about
    4x faster than fp32; elsewhere they are emulated and slower."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device_type: str, cpu_auto: str = "32-true") -> str:
    """The precision a stage runs in on ``device_type`` (``cpu``, ``cuda``, ...): ``precision`` itself unless
    it is ``auto`` (bf16-mixed on CUDA with bf16, else 16-mixed; ``cpu_auto`` on a CPU; fp32 elsewhere)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}; e.g. --precision bf16-mixed")
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    if device_type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return cpu_auto if device_type == "cpu" else "32-true"


def autocast(precision: str, device_type: str = "cpu") -> Any:
    """The autocast context of a resolved precision (a no-op for fp32)."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device_type, dtype=torch.float16)
    return contextlib.nullcontext()


def single_process(cfg: RuntimeConfig, what: str) -> str:
    """The precision of a stage that runs in one CPU process (``fit_epochs`` loops), or a one-line
    :class:`InputError` naming the flag to change when ``cfg`` asks for more (a GPU, several devices or
    nodes, a multi-process strategy). Accepts ``32-true`` and ``bf16-mixed`` (``auto`` = fp32)."""
    bad = []
    if str(cfg.accelerator) not in ("auto", "cpu"):
        bad.append(f"--accelerator {cfg.accelerator}")
    if str(cfg.devices) not in ("1", "auto"):
        bad.append(f"--devices {cfg.devices}")
    if int(cfg.num_nodes) != 1:
        bad.append(f"--num-nodes {cfg.num_nodes}")
    if str(cfg.strategy) not in ("auto", "single_device"):
        bad.append(f"--strategy {cfg.strategy}")
    if bad:
        raise InputError(f"{what} trains in one CPU process: {', '.join(bad)} reach the plain MIL methods and "
                         f"distill-to-label's teacher only; leave them out (--precision works for every method)")
    prec = resolve_precision(cfg.precision, "cpu")
    if prec not in ("32-true", "bf16-mixed"):
        raise InputError(f"{what} on a CPU runs in 32-true or bf16-mixed, not {cfg.precision!r}; "
                         f"use --precision bf16-mixed or 32-true")
    return prec


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (restored afterwards); ``None`` or ``n <= 0``
    changes nothing.

    Why the small stages set it: their steps are a handful of small matrix products, and with more than
    one thread each op pays an OpenMP barrier; on a shared, loaded CPU a barrier waits for a descheduled
    thread (measured on the 2-core build machine: one WENO epoch on digit-bags took 20 s with 2 threads and
    0.8 s with 1)."""
    if n is None or n <= 0:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
