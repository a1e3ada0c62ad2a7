"""``histokd train --max-epochs N`` reaches every registered method's config and caps each of its stages
(fast: configs only; tests/methods/test_every_method.py trains them, slow)."""

from __future__ import annotations

import pytest

import histokd.methods as M
from histokd.engine import stage_epochs
from histokd.errors import InputError
from histokd.pipeline.train import build_config


def stages(method: str, cfg) -> list[int]:
    """Epochs each stage of ``method`` will run at most under ``cfg``."""
    if method == "weno":
        return [stage_epochs(cfg.epochs, cfg.max_epochs)]
    if method == "distill-to-label":
        return [stage_epochs(cfg.train.max_epochs, cfg.max_epochs), stage_epochs(cfg.epochs, cfg.max_epochs)]
    if method == "ifkd":
        return [cfg.loop().epochs_per_round]
    return [cfg.train.max_epochs]


@pytest.mark.parametrize("method", M.METHODS.names())
def test_max_epochs_caps_every_stage(method: str):
    mcls = M.METHODS.get(method)
    assert all(n > 1 for n in stages(method, build_config(mcls, None, None)))
    assert stages(method, build_config(mcls, None, None, max_epochs=1)) in ([1], [1, 1])


def test_max_epochs_never_raises_a_stage_of_several():
    cfg = build_config(M.METHODS.get("distill-to-label"), None, None, max_epochs=45)
    assert stages("distill-to-label", cfg) == [45, 40]  # teacher 50 -> 45, student keeps its 40


@pytest.mark.parametrize("method", M.METHODS.names())
def test_runtime_flags_reach_every_method(method: str):
    """--precision / --devices land in the one RuntimeConfig of every method (``train`` or ``runtime``)."""
    cfg = build_config(M.METHODS.get(method), None, None, precision="bf16-mixed", devices=1)
    rt = cfg.train if "train" in type(cfg).model_fields else cfg.runtime
    assert (rt.precision, rt.devices) == ("bf16-mixed", 1)


@pytest.mark.parametrize("method", ["weno", "ifkd", "distill-to-label"])
def test_devices_for_a_one_process_method_is_one_line(method: str):
    """Refused when the config is built, before any data is read (Method.check_config)."""
    flags = {"precision": "16-mixed"} if method == "distill-to-label" else {"devices": 2, "accelerator": "cuda"}
    want = "32-true or bf16-mixed" if method == "distill-to-label" else "--accelerator cuda, --devices 2 reach the plain"
    with pytest.raises(InputError, match=want) as e:
        build_config(M.METHODS.get(method), None, None, **flags)
    assert "\n" not in str(e.value)
