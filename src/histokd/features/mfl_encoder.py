"""``mfl:<model dir>``: the H&E encoder trained by More From Less (or the H&E-only SSL control).

The model folder is the one ``histokd train-encoder`` writes (``RUN/encoders/<id>/``: ``model.pt`` state
dicts, ``config.yaml``). Only the H&E branch is loaded; the dense branch and the projectors are training
aids. The features are the globally pooled backbone activations, ``[B, D]`` (D = 128 for the ``tiny``
architecture). Tiles are read at the mpp the encoder was trained at and resized to its tile size, with the
normalisation statistics of its training tiles.
"""

from __future__ import annotations

import torch

from histokd.errors import InputError
from histokd.features.encoders import Encoder, register_encoder


class MFLEncoder(Encoder):
    """The H&E backbone of a trained model folder: normalised ``[B, 3, S, S]`` -> ``[B, D]``."""

    def __init__(self, net: torch.nn.Module, **kwargs) -> None:  # noqa: ANN003 - Encoder fields
        super().__init__(**kwargs)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_mfl_encoder(model_dir: str, device: str = "cpu") -> MFLEncoder:
    """Build the H&E encoder of ``model_dir`` in eval mode (raises ModelError on a bad folder)."""
    from histokd.methods.more_from_less import load_encoder_folder
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
