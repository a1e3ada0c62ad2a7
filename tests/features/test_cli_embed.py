from __future__ import annotations

import h5py
import numpy as np
from typer.testing import CliRunner

from histokd.cli import app


def test_cli_embed_and_resume(workspace):
    runner = CliRunner()
    args = ["embed", "-w", str(workspace.root), "--encoder", "handcrafted", "--workers", "0", "--batch-size", "8"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "3 written" in r.output
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "3 skipped" in r.output


def test_cli_embed_failure_exits_nonzero(workspace, tmp_path):
    with h5py.File(workspace.tiles_h5("s0"), "a") as f:
        f.attrs["slide_path"] = str(tmp_path / "gone.tiff")
    r = CliRunner().invoke(app, ["embed", "-w", str(workspace.root), "-e", "handcrafted", "-j", "0"])
    assert r.exit_code == 1
    assert "gone.tiff" in r.output and "2 written" in r.output


def test_cli_bad_encoder_one_line_error(workspace):
    r = CliRunner().invoke(app, ["embed", "-w", str(workspace.root), "-e", "resnet"])
    assert r.exit_code == 2 and "unknown encoder 'resnet'" in r.output


def test_cli_import_features(tmp_path):
    src = tmp_path / "h5_files"
    src.mkdir()
    with h5py.File(src / "a.h5", "w") as f:
        f.create_dataset("features", data=np.ones((2, 4), np.float32))
        f.create_dataset("coords", data=np.zeros((2, 2), np.int64))
    r = CliRunner().invoke(app, ["import-features", str(tmp_path), "-w", str(tmp_path / "run"), "--name", "ext"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "features" / "ext" / "a.h5").exists()
