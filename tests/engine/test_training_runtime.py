"""engine.runtime: one rule for precision, the one-process check, CPU threads; fit_epochs under bf16."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from histokd.engine import fit_epochs
from histokd.engine.runtime import RuntimeConfig, autocast, resolve_precision, single_process, torch_threads
from histokd.errors import InputError


def test_resolve_precision_one_rule():
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("auto", "cpu", cpu_auto="bf16-mixed") == "bf16-mixed"
    assert resolve_precision("32", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cuda") == "bf16-mixed"
    with pytest.raises(InputError, match="precision 'half' is not one of"):
        resolve_precision("half", "cpu")


def test_single_process_accepts_cpu_and_refuses_the_rest_in_one_line():
    assert single_process(RuntimeConfig(), "weno") == "32-true"
    assert single_process(RuntimeConfig(precision="bf16-mixed", accelerator="cpu", devices="1"), "weno") == "bf16-mixed"
    for bad, flag in [({"devices": 2}, "--devices 2"), ({"num_nodes": 2}, "--num-nodes 2"),
                      ({"strategy": "ddp"}, "--strategy ddp"), ({"accelerator": "cuda"}, "--accelerator cuda")]:
        with pytest.raises(InputError, match=flag):
            single_process(RuntimeConfig(**bad), "ifkd")
    with pytest.raises(InputError, match="32-true or bf16-mixed"):
        single_process(RuntimeConfig(precision="16-mixed"), "ifkd")


def test_torch_threads_restores():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_fit_epochs_runs_training_passes_under_the_precision():
    net = nn.Linear(4, 1)
    seen: list[torch.dtype] = []
    x = torch.randn(8, 4)

    def train_epoch(epoch: int) -> dict[str, float]:
        out = net(x)  # a matrix product: bf16 under autocast
        seen.append(out.dtype)
        loss = out.float().pow(2).mean()
        loss.backward()
        return {"loss": float(loss.detach())}

    fit_epochs({"net": net}, train_epoch, 2, precision="bf16-mixed")
    fit_epochs({"net": net}, train_epoch, 1)
    assert seen == [torch.bfloat16, torch.bfloat16, torch.float32]
    assert net.weight.dtype == torch.float32  # weights stay fp32
    with autocast("32-true"):
        assert net(x).dtype == torch.float32


def test_seeding_asks_for_deterministic_kernels_without_importing_the_compiler() -> None:
    import subprocess
    import sys

    code = ("import sys, torch; from histokd.engine.fabric import seed_everything; seed_everything(0); "
            "print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), "
            "'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False"]
