"""``mfl:<model dir>``: the H&E encoder trained by More From Less (or the H&E-only SSL control).

The model folder is the one ``histokd train-encoder`` writes (``RUN/encoders/<id>/``: ``model.pt`` state
dicts, ``config.yaml``). Only the H&E branch is loaded; the dense branch and the projectors are training
aids. The features are the globally pooled backbone activations, ``[B, D]`` (D = 128 for the ``tiny``
architecture). Tiles are read at the mpp the encoder was trained at and resized to its tile size, with the
normalisation statistics of its training tiles.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from histokd.errors import InputError, ModelError
from histokd.features.encoders import Encoder, register_encoder
from histokd.workspace import EncoderFiles


class MFLEncoder(Encoder):
    """The H&E backbone of a trained model folder: normalised ``[B, 3, S, S]`` -> ``[B, D]``."""

    def __init__(self, net: torch.nn.Module, **kwargs) -> None:  # noqa: ANN003 - Encoder fields
        super().__init__(**kwargs)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_mfl_encoder(model_dir: str, device: str = "cpu") -> MFLEncoder:
    """Build the H&E encoder of ``model_dir`` in eval mode (raises ModelError on a bad folder)."""
    from histokd.models.cnn import SmallResNet

    doc, states = load_encoder_folder(model_dir)
    enc = doc["encoder"]
    net = SmallResNet(int(enc.get("in_channels", 3)), enc["arch"])
    net.load_state_dict(states["he_encoder"])
    out = MFLEncoder(
        net,
        name=f"mfl:{model_dir}",
        dim=int(enc["dim"]),
        input_size=int(enc["input_size"]),
        mpp=float(enc["mpp"]),
        mean=tuple(enc["mean"]),
        std=tuple(enc["std"]),
        weights_hash=str(enc.get("weights_hash", "")),
    )
    return out.eval().to(device)


@register_encoder("mfl")
def _mfl(arg: str | None, weights: str | None, device: str) -> Encoder:
    if not arg:
        raise InputError("encoder 'mfl' needs a model folder: --encoder mfl:RUN/encoders/<id>")
    if weights:
        raise InputError("encoder 'mfl:' loads the weights of its model folder; drop --weights")
    return load_mfl_encoder(arg, device)


def load_encoder_folder(model_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read ``config.yaml`` and ``model.pt`` of an encoder folder -> ``(config doc, state dicts)``."""
    import yaml

    d = Path(model_dir)
    files = EncoderFiles(d)
    cfg_p, model_p = files.config, files.weights
    if not cfg_p.exists() or not model_p.exists():
        raise ModelError(
            f"{d}: not an encoder folder (needs config.yaml and model.pt); train one with "
            f"`histokd train-encoder -w RUN`"
        )
    try:
        doc = yaml.safe_load(cfg_p.read_text(encoding="utf-8"))
        states = torch.load(model_p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt files of any kind
        raise ModelError(f"{d}: cannot read the encoder ({e}); re-train it with `histokd train-encoder`") from e
    if not isinstance(doc, dict) or doc.get("kind") != "histokd-encoder" or "he_encoder" not in states:
        raise ModelError(f"{d}: config.yaml / model.pt are not a histokd encoder; re-train it")
    return doc, states
