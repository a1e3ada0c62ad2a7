from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from skimage import data, transform
from skimage.color import rgb2hed

from histokd.errors import InputError, ModelError
from histokd.features.encoders import ENCODERS, build_encoder, encoder_status, parse_spec
from histokd.features.handcrafted import rgb_to_hed




def _tiles(he_image, n: int = 4, seed: int = 0) -> torch.Tensor:
    img = he_image(224 * 2, 224 * 2, seed)
    t = torch.from_numpy(img).permute(2, 0, 1)
    return torch.stack([t[:, 0:224, 0:224], t[:, 224:, 0:224], t[:, 0:224, 224:], t[:, 224:, 224:]])[:n]


def test_parse_spec():
    assert parse_spec("timm:resnet18") == ("timm", "resnet18")
    assert parse_spec("handcrafted") == ("handcrafted", None)
    with pytest.raises(InputError):
        parse_spec("timm:")


def test_unknown_encoder_names_choices():
    with pytest.raises(InputError, match="handcrafted"):
        build_encoder("nope")


def test_hed_matches_skimage(make_he):
    x = _tiles(make_he, 1)
    ours = rgb_to_hed(x.float() / 255)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, rgb2hed(x[0].permute(1, 2, 0).numpy()), atol=1e-5)


def test_handcrafted_shape_determinism_and_sense(make_he):
    enc = build_encoder("handcrafted")
    x = _tiles(make_he, 4)
    f1, f2 = enc.encode(x), enc.encode(x)
    assert f1.shape == (4, enc.dim) == (4, 55)
    torch.testing.assert_close(f1, f2)
    assert torch.isfinite(f1).all()
    # a white tile has no nuclei; an H&E tile has some (blob count is feature 49)
    white = torch.full((1, 3, 224, 224), 245, dtype=torch.uint8)
    assert enc.encode(white)[0, 49] == 0 and (f1[:, 49] > 0).all()
    # batch composition does not change a tile's features
    torch.testing.assert_close(enc.encode(x[:1]), f1[:1])


def test_efficientnet_lite0_cat_offline_and_features():
    enc = build_encoder("efficientnet_lite0")
    assert (enc.dim, enc.input_size, enc.mpp) == (1280, 224, 0.5)
    assert len(enc.weights_hash) == 64
    cat = transform.resize(data.chelsea(), (224, 224), anti_aliasing=True, preserve_range=True).astype(np.uint8)
    x = torch.from_numpy(cat).permute(2, 0, 1)[None]
    probs = enc.classify(enc.transform(x)).softmax(-1)[0]
    assert int(probs.argmax()) in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert int(probs.argmax()) == 285 and probs[285] > 0.5
    f = enc.encode(torch.cat([x, x]))
    assert f.shape == (2, 1280)
    torch.testing.assert_close(f[0], f[1])


def test_torchscript_encoder(tmp_path, make_he):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(net), str(path), _extra_files={"histokd.json": '{"input_size": 64, "mpp": 1.0}'})
    enc = build_encoder(f"torchscript:{path}")
    assert (enc.dim, enc.input_size, enc.mpp) == (6, 64, 1.0)
    assert enc.encode(_tiles(make_he, 2)).shape == (2, 6)
    with pytest.raises(ModelError, match="not found"):
        build_encoder(f"torchscript:{tmp_path / 'missing.pt'}")


def test_timm_unimportable_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ModelError, match="timm cannot be imported.*torchvision"):
        build_encoder("timm:resnet18")


def test_timm_offline_weights_error_names_weights_flag(monkeypatch, tmp_path, make_he):
    """Test-only shim for timm (which cannot be imported here): the pretrained and --weights paths."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3)
            self.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2)}

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    def create_model(name, pretrained=False, num_classes=0):
        if pretrained:
            raise RuntimeError("cannot reach the hub (HF_HUB_OFFLINE=1)")
        return Net()

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model, __version__="shim"))
    with pytest.raises(ModelError, match="--weights FILE"):
        build_encoder("timm:tiny")
    w = tmp_path / "w.pt"
    torch.save(Net().state_dict(), w)
    enc = build_encoder("timm:tiny", weights=str(w))
    assert (enc.dim, enc.input_size, enc.mean) == (5, 32, (0.5, 0.5, 0.5))
    assert enc.encode(_tiles(make_he, 2)).shape == (2, 5)


def test_mfl_prefix_resolved_lazily(tmp_path):
    with pytest.raises((ModelError, InputError)):
        build_encoder(f"mfl:{tmp_path / 'no_model'}")
    assert "mfl" in ENCODERS


def test_encoder_status_rows():
    rows = dict(encoder_status())
    assert rows["handcrafted"].startswith("ok")
    assert rows["efficientnet_lite0 (default)"].startswith("ok")
    assert "timm:<name>" in rows
