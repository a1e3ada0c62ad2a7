from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from histokd.errors import InputError
from histokd.pipeline.embed import embed
from histokd.features.store import read_features


def _all(ws, enc="handcrafted"):
    return {p.stem: read_features(p) for p in sorted(ws.features_dir(enc).glob("*.h5"))}


def test_embed_writes_contract_files(workspace):
    res = embed(workspace, "handcrafted", batch_size=5, workers=2)
    assert sorted(res.written) == ["s0", "s1", "s2"] and not res.failed
    for sid, ff in _all(workspace).items():
        with h5py.File(workspace.tiles_h5(sid)) as f:
            coords = f["coords"][()]
        np.testing.assert_array_equal(ff.coords, coords)
        assert ff.features.shape == (len(coords), 55) and ff.features.dtype == np.float32
        for k in ("encoder", "weights_hash", "histokd_version", "target_mpp", "patch_size", "patch_size_level0"):
            assert k in ff.attrs
        assert ff.attrs["encoder"] == "handcrafted" and ff.attrs["patch_size_level0"] == 64
    assert res.n_tiles == sum(len(f) for f in _all(workspace).values()) and res.tiles_per_s > 0


def test_fresh_and_resumed_runs_agree(workspace):
    fresh = _all_after(workspace, batch_size=4, workers=0)
    # a killed run: one slide done, one half-written temp file, one missing
    workspace.features_h5("handcrafted", "s1").unlink()
    workspace.features_h5("handcrafted", "s2").unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # the killed run's temp names carry its (now gone) pid
    (workspace.features_dir("handcrafted") / f".s2.h5.histokd-{dead.pid}-zzz.tmp").write_bytes(b"partial")
    mtime = workspace.features_h5("handcrafted", "s0").stat().st_mtime_ns
    res = embed(workspace, "handcrafted", batch_size=7, workers=2)
    assert res.skipped == ["s0"] and sorted(res.written) == ["s1", "s2"]
    assert workspace.features_h5("handcrafted", "s0").stat().st_mtime_ns == mtime
    assert not list(workspace.features_dir("handcrafted").glob(".*.tmp"))
    resumed = _all(workspace)
    for sid in fresh:
        np.testing.assert_allclose(resumed[sid].features, fresh[sid].features, rtol=1e-5, atol=1e-6)


def _all_after(ws, **kw):
    embed(ws, "handcrafted", **kw)
    return _all(ws)


def test_changed_options_are_not_skipped(workspace):
    embed(workspace, "handcrafted", workers=0, slides=["s2"])
    res = embed(workspace, "handcrafted", workers=0, slides=["s2"], dtype="float16")
    assert res.written == ["s2"]
    with h5py.File(workspace.features_h5("handcrafted", "s2")) as f:
        assert f["features"].dtype == np.float16
    assert embed(workspace, "handcrafted", workers=0, slides=["s2"], overwrite=True, dtype="float16").written == ["s2"]


def test_broken_slide_fails_alone(workspace, tmp_path):
    bad = tmp_path / "broken.tiff"
    bad.write_bytes(b"II*\x00garbage")
    with h5py.File(workspace.tiles_h5("s1"), "a") as f:
        f.attrs["slide_path"] = str(bad)
    res = embed(workspace, "handcrafted", workers=2, batch_size=4)
    assert sorted(res.written) == ["s0", "s2"] and list(res.failed) == ["s1"]
    assert "broken.tiff" in res.failed["s1"]
    assert not workspace.features_h5("handcrafted", "s1").exists()


def test_efficientnet_embed_and_stain_norm(workspace):
    res = embed(workspace, "efficientnet_lite0", workers=1, batch_size=16, slides=["s2"], stain_norm="macenko")
    ff = read_features(workspace.features_h5("efficientnet_lite0", "s2"), expected_dim=1280)
    assert res.written == ["s2"] and ff.attrs["stain_norm"] == "macenko" and len(ff) == 4


def test_bad_options(workspace):
    with pytest.raises(InputError, match="fp16 needs a GPU"):
        embed(workspace, "handcrafted", device="cpu", precision="fp16")
    with pytest.raises(InputError, match="--dtype"):
        embed(workspace, "handcrafted", dtype="int8")
    with pytest.raises(InputError, match="stain"):
        embed(workspace, "handcrafted", stain_norm="foo")


def test_bf16_on_cpu_close_to_fp32(workspace):
    a = embed(workspace, "efficientnet_lite0", workers=0, slides=["s2"])
    f32 = read_features(workspace.features_h5("efficientnet_lite0", "s2")).features
    embed(workspace, "efficientnet_lite0", workers=0, slides=["s2"], precision="bf16", overwrite=True)
    bf = read_features(workspace.features_h5("efficientnet_lite0", "s2")).features
    assert a.written == ["s2"]
    cos = (f32 * bf).sum(1) / np.linalg.norm(f32, axis=1) / np.linalg.norm(bf, axis=1)
    assert cos.min() > 0.98
