"""Issue 16, a tampered ``model.pt`` used to end in a raw ``UnpicklingError``: now one line naming the file
and the fix, exit 2, and nothing in the file is run (``weights_only=True`` stays)."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from badinput import TILE_ARGS, cli, cohort_rows, write_cohort

from histokd.errors import ModelError
from histokd.methods.base import load_model_state


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, slide_files) -> Path:
    """A workspace with handcrafted features and an abmil model ``m`` (one epoch)."""
    root = tmp_path_factory.mktemp("model_files")
    cohort = write_cohort(root / "cohort.csv", cohort_rows(slide_files), tissue_png=slide_files.tissue_png)
    ws = root / "run"
    assert cli("tile", cohort, "-w", ws, *TILE_ARGS).exit_code == 0
    assert cli("embed", "-w", ws, "-e", "handcrafted", "-j", "0").exit_code == 0
    r = cli("train", "-w", ws, "--method", "abmil", "--max-epochs", "1", "--model-id", "m")
    assert r.exit_code == 0, r.output
    return ws


class _Payload:
    """A pickle that would create a file when loaded without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _tamper(path: Path, how: str, tmp_path: Path) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"\x80\x04not a torch file at all" * 10)
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "malicious-pickle":
        path.write_bytes(pickle.dumps({"model": _Payload(tmp_path / "pwned")}))
    elif how == "malicious-torch":
        torch.save({"model": _Payload(tmp_path / "pwned")}, path)
    elif how == "a-tensor":
        torch.save(torch.zeros(3), path)
    elif how == "other-weights":
        torch.save({"model": {"nothing": torch.zeros(1)}}, path)


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "malicious-pickle", "malicious-torch", "a-tensor",
                                 "other-weights"])
def test_tampered_model_file_is_one_line(trained: Path, tmp_path: Path, how: str):
    ws = tmp_path / "run"
    shutil.copytree(trained, ws, symlinks=True)
    model_pt = ws / "models" / "m" / "model.pt"
    _tamper(model_pt, how, tmp_path)
    r = cli("label", "-w", ws, "--model", "m", "--bootstrap", "10")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {model_pt}"), r.output
    assert "retrain" in lines[0]
    assert not (tmp_path / "pwned").exists()
    assert not (ws / "predictions" / "m" / "bags.csv").exists()


def test_untampered_model_still_labels(trained: Path, tmp_path: Path):
    ws = tmp_path / "run"
    shutil.copytree(trained, ws, symlinks=True)
    r = cli("label", "-w", ws, "--model", "m", "--bootstrap", "10")
    assert r.exit_code == 0, r.output


def test_load_model_state_messages(tmp_path: Path):
    with pytest.raises(ModelError, match="model file missing; retrain"):
        load_model_state(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match=r"model.pt: not a valid histokd model file \(UnpicklingError"):
        load_model_state(tmp_path, retrain="`histokd train --method ifkd`")
