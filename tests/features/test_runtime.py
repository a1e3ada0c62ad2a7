"""Graph runtimes on CPU (ONNX Runtime, OpenVINO): same features as PyTorch, cached graphs, fallbacks and refusals."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from histokd.cli import app
from histokd.errors import InputError
from histokd.features.encoders import build_encoder
from histokd import embed
from histokd.features.extract import TileBatches
from histokd.features.mfl_encoder import MFLEncoder
from histokd.pipeline.embed import make_jobs
from histokd.features.runtime import (
    OnnxRunner,
    OpenVinoRunner,
    agreement,
    build_runner,
    cache_dir,
    graph_key,
    min_cosine,
    resolve_runtime,
    torch_runner,
)
from histokd.features.store import read_features
from histokd.models.cnn import SmallResNet


def per_tile_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def lite0():
    return build_encoder("efficientnet_lite0")


def real_tiles(ws, size: int) -> torch.Tensor:
    jobs, _ = make_jobs(ws, "x")
    ds = TileBatches(jobs, 64, size)
    return torch.cat([ds[i][2] for i in range(len(ds))])


def test_onnx_features_match_pytorch_per_tile(workspace, lite0):
    tiles = real_tiles(workspace, lite0.input_size)  # 22 real H&E-like tiles
    onnx, used, _ = build_runner(lite0, "onnx", "cpu")
    assert used == "onnx" and isinstance(onnx, OnnxRunner)
    ref = torch_runner(lite0, "cpu", "fp32")(tiles)
    got = onnx(tiles)
    assert got.shape == ref.shape == (len(tiles), 1280) and got.dtype == np.float32
    assert per_tile_cosine(ref, got).min() >= 0.9999
    # exporting must leave the PyTorch encoder as it was (eval mode, BatchNorm statistics untouched)
    assert not any(m.training for m in lite0.modules())
    np.testing.assert_allclose(torch_runner(lite0, "cpu", "fp32")(tiles), ref, rtol=0, atol=1e-5)


def test_openvino_features_match_pytorch_per_tile(workspace, lite0):
    tiles = real_tiles(workspace, lite0.input_size)
    ov, used, _ = build_runner(lite0, "openvino", "cpu")
    assert used == "openvino" and isinstance(ov, OpenVinoRunner)
    ref = torch_runner(lite0, "cpu", "fp32")(tiles)
    got = ov(tiles)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert per_tile_cosine(ref, got).min() >= 0.9999  # f32 inference precision, not the CPU's bf16 default
    assert ov.path == OnnxRunner(lite0).path  # both runtimes read the one cached graph
    if sys.platform.startswith("linux"):  # OpenVINO's ~20 KB signal stack is replaced (see _roomy_signal_stack)
        import ctypes

        class _Stack(ctypes.Structure):
            _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

        now = _Stack()
        assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(now)) == 0
        assert now.ss_flags & 2 or now.ss_size >= 1 << 20
    assert resolve_runtime("auto", lite0, "cpu", "bf16") == "torch"  # bf16 is a PyTorch autocast precision
    for prec in ("int8", "bf16"):
        with pytest.raises(InputError, match="with --runtime openvino: choose fp32"):
            resolve_runtime("openvino", lite0, "cpu", prec)
    with pytest.raises(InputError, match="--runtime openvino runs on the CPU"):
        resolve_runtime("openvino", lite0, "cuda", "fp32")


def test_auto_prefers_openvino_then_onnx(lite0, monkeypatch, caplog):
    from histokd.features import runtime as rt

    assert resolve_runtime("auto", lite0, "cpu", "fp32") == "openvino"
    monkeypatch.setattr(rt, "openvino_version", lambda: None)  # not installed
    assert resolve_runtime("auto", lite0, "cpu", "fp32") == "onnx"
    with pytest.raises(InputError, match="openvino is not installed; pip install openvino"):
        resolve_runtime("openvino", lite0, "cpu", "fp32")
    monkeypatch.undo()

    def broken(*a, **k):
        raise RuntimeError("no CPU plugin")

    monkeypatch.setattr(rt.OpenVinoRunner, "__init__", broken)  # installed but failing: ONNX Runtime instead
    with caplog.at_level(logging.WARNING, logger="histokd"):
        runner, used, _ = build_runner(lite0, "auto", "cpu")
    assert used == "onnx" and isinstance(runner, OnnxRunner)
    assert "OpenVINO unavailable (RuntimeError: no CPU plugin); using ONNX Runtime" in caplog.text
    with pytest.raises(InputError, match="OpenVINO cannot run it .*no CPU plugin"):
        build_runner(lite0, "openvino", "cpu")


def test_auto_keeps_the_faster_runtime_measured_once_per_machine(lite0, monkeypatch, tmp_path, caplog):
    from histokd.features import runtime_pick as rp

    monkeypatch.setenv("HISTOKD_CACHE_DIR", str(tmp_path))
    rates = {"OpenVinoRunner": 100.0, "OnnxRunner": 250.0}
    monkeypatch.setattr(rp, "tiles_per_s", lambda runner, size: rates[type(runner).__name__])
    with caplog.at_level(logging.INFO, logger="histokd"):
        runner, used, _ = build_runner(lite0, "auto", "cpu", threads=2)
    assert used == "onnx" and isinstance(runner, OnnxRunner)
    assert "onnx is the faster here (openvino 100, onnx 250 tiles/s" in caplog.text
    (entry,) = json.loads((tmp_path / "runtime-choice.json").read_text()).values()
    assert entry["runtime"] == "onnx" and entry["tiles_per_s"] == {"openvino": 100.0, "onnx": 250.0}
    # the next process on this machine reads the answer instead of measuring again
    monkeypatch.setattr(rp, "tiles_per_s", lambda runner, size: pytest.fail("measured twice"))
    assert build_runner(lite0, "auto", "cpu", threads=2)[1] == "onnx"
    # another thread count (or CPU, or runtime version) is another machine: measured again
    rates.update(OpenVinoRunner=300.0)
    monkeypatch.setattr(rp, "tiles_per_s", lambda runner, size: rates[type(runner).__name__])
    assert build_runner(lite0, "auto", "cpu", threads=1)[1] == "openvino"
    assert len(json.loads((tmp_path / "runtime-choice.json").read_text())) == 2
    # an explicit runtime is never second-guessed; a damaged choice file is measured again, not an error
    assert build_runner(lite0, "openvino", "cpu", threads=2)[1] == "openvino"
    (tmp_path / "runtime-choice.json").write_text("{not json")
    assert build_runner(lite0, "auto", "cpu", threads=2)[1] == "openvino"
    assert not list(tmp_path.glob(".choice-*"))


def test_the_real_measurement_is_a_rate(lite0):
    from histokd.features import runtime_pick as rp

    rate = rp.tiles_per_s(OnnxRunner(lite0), lite0.input_size)
    assert 1.0 < rate < 1e5 and rp.cpu_model()


def test_graph_is_cached_under_its_key(lite0):
    first = OnnxRunner(lite0)
    again = OnnxRunner(lite0)
    assert again.export_seconds == 0.0 and again.path == first.path
    assert first.path.parent == cache_dir() / "onnx" and first.path.is_file()
    assert first.path.with_suffix(".probe.npz").is_file()
    assert first.cached_agreement() >= 0.9999
    # other weights -> another key, another graph
    other = build_encoder("efficientnet_lite0")
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    assert graph_key(other, "fp32") != graph_key(lite0, "fp32") != graph_key(lite0, "int8")
    renormalised = build_encoder("efficientnet_lite0")
    renormalised.mean = (0.4, 0.5, 0.5)  # the normalisation is part of the graph, not of the state dict
    assert graph_key(renormalised, "fp32") != graph_key(lite0, "fp32")


def test_embed_defaults_to_the_faster_graph_runtime_on_cpu_and_matches_torch(workspace):
    a = embed(workspace, "efficientnet_lite0", workers=1, slides=["s1", "s2"])
    choice = json.loads((cache_dir() / "runtime-choice.json").read_text())
    (measured,) = [c for c in choice.values() if c["runtime"] == a.runtime]  # measured here, once
    assert a.runtime == max(measured["tiles_per_s"], key=measured["tiles_per_s"].get)
    assert set(measured["tiles_per_s"]) == {"onnx", "openvino"} and sorted(a.written) == ["s1", "s2"]
    onnx_feats = {s: read_features(workspace.features_h5("efficientnet_lite0", s)) for s in ("s1", "s2")}
    assert onnx_feats["s1"].attrs["runtime"] == a.runtime and onnx_feats["s1"].attrs["precision"] == "fp32"
    # same features: a rerun with the other runtime is a resume (nothing to redo) ...
    b = embed(workspace, "efficientnet_lite0", workers=0, slides=["s1", "s2"], runtime="torch")
    assert sorted(b.skipped) == ["s1", "s2"] and not b.written
    # ... and forced, PyTorch gives the same numbers per tile
    embed(workspace, "efficientnet_lite0", workers=0, slides=["s1", "s2"], runtime="torch", overwrite=True)
    for s, ff in onnx_feats.items():
        tf = read_features(workspace.features_h5("efficientnet_lite0", s))
        assert tf.attrs["runtime"] == "torch"
        assert per_tile_cosine(tf.features, ff.features).min() >= 0.9999


def test_precision_is_part_of_the_resume_key(workspace):
    embed(workspace, "efficientnet_lite0", workers=0, slides=["s2"])
    res = embed(workspace, "efficientnet_lite0", workers=0, slides=["s2"], precision="bf16")
    assert res.runtime == "torch" and res.written == ["s2"]  # bf16 is a PyTorch autocast precision


def test_handcrafted_runs_on_torch(workspace, lite0):
    hc = build_encoder("handcrafted")
    assert resolve_runtime("auto", hc, "cpu", "fp32") == "torch"
    with pytest.raises(InputError, match="does not export to ONNX; use --runtime torch"):
        resolve_runtime("onnx", hc, "cpu", "fp32")
    with pytest.raises(InputError, match="runs on the CPU"):
        resolve_runtime("onnx", lite0, "cuda", "fp32")
    with pytest.raises(InputError, match="--runtime 'tensorrt'"):
        resolve_runtime("tensorrt", lite0, "cpu", "fp32")
    with pytest.raises(InputError, match="int8 runs through ONNX Runtime on the CPU; add --device cpu"):
        resolve_runtime("auto", lite0, "cuda", "int8")
    with pytest.raises(InputError, match="PyTorch autocast precision"):
        resolve_runtime("onnx", lite0, "cpu", "bf16")
    assert resolve_runtime("auto", lite0, "cpu", "bf16") == "torch"
    assert embed(workspace, "handcrafted", slides=["s2"]).runtime == "torch"


def test_torchscript_and_mfl_encoders_export(tmp_path):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ).eval()
    ts = tmp_path / "enc.pt"
    torch.jit.save(torch.jit.script(net), str(ts), _extra_files={"histokd.json": json.dumps({"input_size": 48})})
    for enc in (
        build_encoder(f"torchscript:{ts}"),
        MFLEncoder(SmallResNet(3, "tiny").eval(), name="mfl:test", dim=128, input_size=64, mpp=1.0,
                   mean=(0.7, 0.5, 0.7), std=(0.2, 0.2, 0.2), weights_hash="t").eval(),
    ):
        for runtime in ("auto", "onnx", "openvino"):
            runner, used, _ = build_runner(enc, runtime, "cpu")
            assert used in (("openvino", "onnx") if runtime == "auto" else (runtime,)), enc.name
            assert agreement(enc, runner) >= 0.9999


def test_a_bad_cached_graph_falls_back_or_is_refused(lite0, caplog, monkeypatch, tmp_path):
    monkeypatch.setenv("HISTOKD_CACHE_DIR", str(tmp_path / "cache"))
    good = OnnxRunner(lite0)
    # a graph whose stored PyTorch features disagree (as a stale or tampered cache entry would)
    probe = good.path.with_suffix(".probe.npz")
    with np.load(probe) as z:
        wrong = -z["features"]
    with open(probe, "wb") as f:
        np.savez(f, features=wrong)
    with caplog.at_level(logging.WARNING, logger="histokd"):
        _, used, _ = build_runner(lite0, "auto", "cpu")
    assert used == "torch" and "using PyTorch" in caplog.text
    with pytest.raises(InputError, match="ONNX Runtime cannot run it .*use --runtime torch"):
        build_runner(lite0, "onnx", "cpu")
    with pytest.raises(InputError, match="OpenVINO cannot run it .*use --runtime torch"):
        build_runner(lite0, "openvino", "cpu")
    good.path.write_bytes(b"not a graph")
    with pytest.raises(InputError, match="use --runtime torch"):
        build_runner(lite0, "onnx", "cpu")


def test_min_cosine_counts_zero_rows_as_equal():
    a = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert min_cosine(a, a) == pytest.approx(1.0)
    assert min_cosine(a, -a) == pytest.approx(-1.0)


def test_cli_runtime_option(workspace):
    r = CliRunner().invoke(app, ["embed", "-w", str(workspace.root), "--runtime", "bogus", "-e", "handcrafted"])
    assert r.exit_code != 0 and "--runtime 'bogus'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["embed", "-w", str(workspace.root), "-e", "handcrafted"])
    assert r.exit_code == 0 and "(torch)" in r.output


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HISTOKD_CACHE_DIR", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("HISTOKD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "histokd"
    assert os.fspath(cache_dir()).endswith("histokd") and isinstance(cache_dir(), Path)


def test_int8_is_an_onnx_precision(tmp_path, workspace):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU6(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU6(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ).eval()
    ts = tmp_path / "enc.pt"
    torch.jit.save(torch.jit.script(net), str(ts), _extra_files={"histokd.json": json.dumps({"input_size": 32})})
    enc = build_encoder(f"torchscript:{ts}")
    runner, used, export_s = build_runner(enc, "auto", "cpu", "int8")
    assert used == "onnx" and runner.precision == "int8" and export_s > 0
    assert graph_key(enc, "int8") in runner.path.name
    assert agreement(enc, runner) >= 0.95  # quantised: close to PyTorch fp32, not equal
    with pytest.raises(InputError, match="int8 runs through ONNX Runtime"):
        build_runner(enc, "torch", "cpu", "int8")
    with pytest.raises(InputError, match="does not export to ONNX"):
        build_runner(build_encoder("handcrafted"), "auto", "cpu", "int8")
    res = embed(workspace, f"torchscript:{ts}", workers=0, slides=["s2"], precision="int8")
    ff = read_features(workspace.features_h5(f"torchscript:{ts}", "s2"))
    assert res.runtime == "onnx" and ff.attrs["precision"] == "int8" and np.isfinite(ff.features).all()
