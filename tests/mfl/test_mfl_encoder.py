"""A saved encoder folder loads through ``mfl:`` and embeds deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histokd.errors import ModelError
from histokd.features.encoders import build_encoder
from histokd.methods.more_from_less import MFLConfig, fit_encoders, load_encoder_folder, save_encoder


def _tiles(n: int, size: int, c: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, c), dtype=np.uint8)


@pytest.fixture(scope="module", params=["more-from-less", "ssl-he"])
def saved(request, tmp_path_factory):
    cfg = MFLConfig(method=request.param, epochs=1, batch_size=8, tile_size=24, proj_hidden=32, proj_dim=32)
    he = _tiles(16, 24, 3, 0)
    dense = _tiles(16, 24, 4, 1) if request.param == "more-from-less" else None
    nets, info = fit_encoders(he, dense, cfg, show_progress=False)
    assert len(info["history"]) == 1 and np.isfinite(info["history"][0]["loss"])
    out = save_encoder(tmp_path_factory.mktemp("enc") / "enc1", nets, cfg, info, {"note": "test"})
    return out, nets, request.param


def test_folder_contents(saved):
    out, _, method = saved
    assert {p.name for p in out.iterdir()} == {"model.pt", "config.yaml", "provenance.json", "metrics.json"}
    doc, states = load_encoder_folder(out)
    assert doc["method"] == method
    assert ("dense_encoder" in states) == (method == "more-from-less")
    assert not list(out.parent.glob(".*.tmp"))  # no temporary folder left behind


def test_loads_through_registry_and_embeds(saved):
    out, nets, _ = saved
    enc = build_encoder(f"mfl:{out}")
    assert enc.dim == 128 and enc.input_size == 24 and enc.mpp == 1.0
    imgs = torch.from_numpy(_tiles(5, 24, 3, 7)).permute(0, 3, 1, 2).contiguous()
    f1 = enc.encode(imgs)
    f2 = enc.encode(imgs)
    assert f1.shape == (5, 128)
    torch.testing.assert_close(f1, f2)
    # the same numbers as the trained H&E backbone itself
    with torch.no_grad():
        ref = nets.he_encoder(enc.transform(imgs))
    torch.testing.assert_close(f1, ref)
    # larger tiles are resized to the encoder's tile size
    big = torch.from_numpy(_tiles(2, 48, 3, 8)).permute(0, 3, 1, 2).contiguous()
    assert enc.encode(big).shape == (2, 128)


def test_overwrite_is_refused(saved):
    out, nets, _ = saved
    doc, _ = load_encoder_folder(out)
    with pytest.raises(Exception, match="exists"):
        save_encoder(out, nets, MFLConfig(**doc["config"]), {"stats": {}, "seconds": 0, "steps": 0, "history": []}, {})


def test_bad_folder(tmp_path):
    with pytest.raises(ModelError, match="not an encoder folder"):
        build_encoder(f"mfl:{tmp_path}")
    (tmp_path / "config.yaml").write_text("kind: something-else\n")
    (tmp_path / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError):
        build_encoder(f"mfl:{tmp_path}")


def test_training_is_seeded():
    cfg = MFLConfig(epochs=1, batch_size=8, tile_size=16, proj_hidden=16, proj_dim=16)
    he, dense = _tiles(16, 16, 3, 0), _tiles(16, 16, 4, 1)
    a, _ = fit_encoders(he, dense, cfg, show_progress=False)
    b, _ = fit_encoders(he, dense, cfg, show_progress=False)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(va, vb, msg=ka)
