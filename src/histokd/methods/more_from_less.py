"""More From Less (Farndale et al. 2023): cross-modal self-supervised distillation into an H&E encoder.

Two unshared CNN encoders, one for H&E tiles and one for the aligned tiles of an information-dense
modality (multiplex channels), are trained jointly with VICReg (or Barlow Twins) between their projected
embeddings. Only the H&E encoder is kept for use (``mfl:<model dir>``): at inference only H&E is needed.

The control, ``ssl-he``, is the same loss on two augmented views of the H&E tile through one shared
(siamese) encoder and projector, with the same architecture, tiles, epochs and batch size.

Choices (see ``docs/mfl.md``):

- Augmentations are drawn independently per branch, geometry included (D4 flips/rot90 and a random
  resized crop), as in the reference code: the pair shares its tissue, not its pixel grid, and a globally
  pooled embedding should not depend on orientation. ``shared_geometry=True`` draws one geometry per pair
  (kept as an ablation).
- H&E branch: colour jitter (brightness, contrast, saturation) and stain jitter (per-channel optical
  density gain), Gaussian noise. Dense branch: per-channel gain, Gaussian noise, channel dropout.
- VICReg follows Bardes et al. 2022: ``L = λ·MSE(z_a, z_b) + μ·(v(z_a) + v(z_b))/2 + ν·(c(z_a) + c(z_b))``
  with ``v(z) = mean_d ReLU(γ − sqrt(Var(z_d) + ε))`` and ``c(z) = Σ_{k≠l} Cov(z)_kl² / D``.
- Barlow Twins: ``Σ_i (1 − C_ii)² + λ_BT · Σ_{i≠j} C_ij²``, ``C`` the cross-correlation of the
  batch-standardised embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from histokd.engine.epochs import fit_epochs
from histokd.engine.fabric import seed_everything
from histokd.engine.runtime import RuntimeConfig, single_process, torch_threads
from histokd.errors import InputError, ModelError
from histokd.features.mfl_encoder import load_encoder_folder  # noqa: F401  (re-exported)
from histokd.methods.mfl_augment import (  # noqa: F401  (re-exported for their importers)
    apply_geometry,
    augment_pair,
    draw_geometry,
    jitter_dense,
    jitter_he,
)
from histokd.registry import Registry
from histokd.workspace import EncoderFiles, clean_stale_temps, temp_prefix

log = logging.getLogger("histokd")

MFL_METHODS = ("more-from-less", "ssl-he")


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------
def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix ``[D, D]`` as a flat ``[D*(D-1)]`` tensor."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_terms(
    za: torch.Tensor, zb: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4
) -> dict[str, torch.Tensor]:
    """Unweighted VICReg terms of two embeddings ``[N, D]``: ``invariance``, ``variance``, ``covariance``.

    ``variance`` is the mean over both branches of ``mean_d ReLU(γ − sqrt(Var_d + ε))`` (unbiased variance);
    ``covariance`` is the sum over both branches of ``Σ_{k≠l} Cov_kl² / D``.
    """
    n, d = za.shape
    inv = F.mse_loss(za, zb)
    var = 0.0
    cov = 0.0
    for z in (za, zb):
        zc = z - z.mean(dim=0)
        std = torch.sqrt(zc.pow(2).sum(dim=0) / (n - 1) + eps)
        var = var + F.relu(gamma - std).mean() / 2
        c = (zc.T @ zc) / (n - 1)
        cov = cov + off_diagonal(c).pow(2).sum() / d
    return {"invariance": inv, "variance": var, "covariance": cov}  # type: ignore[dict-item]


def vicreg_loss(
    za: torch.Tensor,
    zb: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, float]]:
    """VICReg: ``λ·invariance + μ·variance + ν·covariance``; returns ``(loss, terms as floats)``."""
    t = vicreg_terms(za, zb, gamma, eps)
    loss = sim_weight * t["invariance"] + var_weight * t["variance"] + cov_weight * t["covariance"]
    return loss, {k: float(v.detach()) for k, v in t.items()}


def barlow_twins_loss(
    za: torch.Tensor, zb: torch.Tensor, lambd: float = 5e-3, eps: float = 1e-5
) -> tuple[torch.Tensor, dict[str, float]]:
    """Barlow Twins on ``[N, D]`` embeddings: ``Σ(1 − C_ii)² + λ·Σ_{i≠j} C_ij²``.

    Each dimension is standardised over the batch (biased variance, as BatchNorm without affine) and
    ``C = z_aᵀ z_b / N`` is ``[D, D]``.
    """
    n = za.shape[0]
    na = (za - za.mean(0)) / torch.sqrt(za.var(0, unbiased=False) + eps)
    nb = (zb - zb.mean(0)) / torch.sqrt(zb.var(0, unbiased=False) + eps)
    c = na.T @ nb / n
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = off_diagonal(c).pow(2).sum()
    return on + lambd * off, {"on_diagonal": float(on.detach()), "off_diagonal": float(off.detach())}


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
class MFLConfig(BaseModel):
    """Everything needed to train (and rebuild) a More From Less / H&E-SSL encoder."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["more-from-less", "ssl-he"] = "more-from-less"
    loss: Literal["vicreg", "barlow"] = "vicreg"
    arch: str = "tiny"
    proj_hidden: int = 512
    proj_dim: int = 512
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=4)
    lr: float = 2e-3
    weight_decay: float = 1e-5
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    tile_size: int = Field(64, ge=16)
    mpp: float = Field(1.0, gt=0)
    max_tiles: int = Field(4000, ge=8)
    splits: list[str] = ["train"]
    seed: int = 0
    # VICReg (Bardes et al. 2022 defaults)
    sim_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0
    gamma: float = 1.0
    eps: float = 1e-4
    # Barlow Twins
    bt_lambda: float = 5e-3
    # augmentations
    shared_geometry: bool = False
    crop_scale: tuple[float, float] = (0.75, 1.0)
    color_strength: float = 0.5
    channel_drop_p: float = 0.2
    noise_p: float = 0.3
    # --precision (one CPU process: engine.runtime.single_process)
    runtime: RuntimeConfig = RuntimeConfig()


LOSSES: Registry[Callable[..., tuple[torch.Tensor, dict[str, float]]]] = Registry("SSL loss")
LOSSES.register("vicreg")(
    lambda za, zb, c: vicreg_loss(za, zb, c.sim_weight, c.var_weight, c.cov_weight, c.gamma, c.eps)
)
LOSSES.register("barlow")(lambda za, zb, c: barlow_twins_loss(za, zb, c.bt_lambda))


# --------------------------------------------------------------------------------------------------
# Networks of one training run
# --------------------------------------------------------------------------------------------------
class Branches(torch.nn.Module):
    """The trainable parts: ``he_encoder`` + ``he_projector``, and for MFL ``dense_encoder`` + ``dense_projector``."""

    def __init__(self, config: MFLConfig, dense_channels: int) -> None:
        super().__init__()
        from histokd.models.cnn import Projector, SmallResNet

        self.he_encoder = SmallResNet(3, config.arch)
        self.he_projector = Projector(self.he_encoder.dim, config.proj_hidden, config.proj_dim)
        self.dense_encoder: SmallResNet | None = None
        self.dense_projector: Projector | None = None
        if config.method == "more-from-less":
            self.dense_encoder = SmallResNet(dense_channels, config.arch)
            self.dense_projector = Projector(self.dense_encoder.dim, config.proj_hidden, config.proj_dim)

    def embed_pair(self, va: torch.Tensor, vb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected embeddings ``[B, P]`` of the two views (the second through the dense branch for MFL)."""
        za = self.he_projector(self.he_encoder(va))
        if self.dense_encoder is None:
            zb = self.he_projector(self.he_encoder(vb))  # siamese H&E-only control
        else:
            assert self.dense_projector is not None
            zb = self.dense_projector(self.dense_encoder(vb))
        return za, zb


def _channel_stats(tiles: np.ndarray, max_n: int = 2000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units of ``[N, H, W, C]`` uint8 tiles (first ``max_n`` tiles)."""
    t = tiles[:max_n].astype(np.float64) / 255.0
    mean = t.mean(axis=(0, 1, 2))
    std = np.maximum(t.std(axis=(0, 1, 2)), 1e-3)
    return [float(v) for v in mean], [float(v) for v in std]


def _normalisation(he: np.ndarray, dense: np.ndarray | None) -> dict[str, Any]:
    """Per-channel mean / std of the H&E tiles (and the dense tiles, for More From Less)."""
    stats: dict[str, Any] = dict(zip(("he_mean", "he_std"), _channel_stats(he)))
    if dense is not None:
        stats["dense_mean"], stats["dense_std"] = _channel_stats(dense)
    return stats


def _to_tensor(tiles: np.ndarray) -> torch.Tensor:
    """``[B, H, W, C]`` uint8 -> ``[B, C, H, W]`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).to(torch.float32) / 255.0


def _lr_at(step: int, total: int, base: float, warmup_frac: float) -> float:
    warm = max(1, int(round(total * warmup_frac)))
    if step < warm:
        return base * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
def fit_encoders(
    he: np.ndarray,
    dense: np.ndarray | None,
    config: MFLConfig,
    show_progress: bool | None = None,
    threads: int | None = None,
) -> tuple[Branches, dict[str, Any]]:
    """Train on in-memory tiles: ``he`` [N, H, W, 3] uint8, ``dense`` [N, H, W, C] uint8 (MFL) or None.

    Returns the trained networks (eval mode) and a history dict (per-epoch mean loss and terms, the
    normalisation statistics). Deterministic for a given config and data. ``threads`` sets torch's CPU
    threads for the run (``None``: torch's default); on a shared, loaded CPU one thread is several times
    faster for these small CNNs, because every OpenMP barrier waits for a descheduled thread.
    """
    with torch_threads(threads):
        return _fit_encoders(he, dense, config, show_progress)


def _fit_encoders(
    he: np.ndarray, dense: np.ndarray | None, config: MFLConfig, show_progress: bool | None
) -> tuple[Branches, dict[str, Any]]:
    from histokd.progress import progress

    if config.method == "more-from-less" and dense is None:
        raise InputError("more-from-less needs the dense tiles; use method ssl-he for H&E only")
    n = len(he)
    if n < 4:
        raise InputError(f"only {n} tiles to train on; tile more slides or raise --max-tiles")
    seed_everything(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    stats = _normalisation(he, dense if config.method == "more-from-less" else None)
    he_mean, he_std = stats["he_mean"], stats["he_std"]
    nets = Branches(config, 0 if dense is None or config.method != "more-from-less" else dense.shape[-1])
    nets.train()
    opt = torch.optim.AdamW(nets.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    bs = min(config.batch_size, n)
    steps_per_epoch = n // bs  # drop the last partial batch: VICReg statistics need full batches
    total = steps_per_epoch * config.epochs
    loss_fn = LOSSES.get(config.loss)

    def norm(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
        return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)

    jit_he = lambda x, g: jitter_he(x, g, config.color_strength, config.noise_p)  # noqa: E731
    jit_dense = lambda x, g: jitter_dense(x, g, config.channel_drop_p, config.noise_p)  # noqa: E731
    step = 0
    disable = None if show_progress is None else not show_progress

    def train_epoch(epoch: int) -> dict[str, float]:
        nonlocal step
        perm = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        for i in range(steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs].numpy()
            a = _to_tensor(he[idx])
            if config.method == "more-from-less":
                assert dense is not None
                va, vb = augment_pair(
                    a, _to_tensor(dense[idx]), jit_he, jit_dense, gen, config.shared_geometry, config.crop_scale
                )
                vb = norm(vb, stats["dense_mean"], stats["dense_std"])
            else:
                va, vb = augment_pair(a, a, jit_he, jit_he, gen, config.shared_geometry, config.crop_scale)
                vb = norm(vb, he_mean, he_std)
            va = norm(va, he_mean, he_std)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, config.lr, config.warmup_frac)
            za, zb = nets.embed_pair(va, vb)
            loss, terms = loss_fn(za, zb, config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # The reference code replaces NaN gradients; we stop instead, since NaN means a bug or a bad lr.
            if not torch.isfinite(loss):
                raise ModelError(f"{config.method}: loss became {float(loss.detach())} at step {step}; lower --lr")
            torch.nn.utils.clip_grad_norm_(nets.parameters(), config.grad_clip)
            opt.step()
            step += 1
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            # collapse monitor, whatever the loss: mean per-dimension batch std of each projection
            # (VICReg pushes it to gamma = 1; a value drifting to 0 means the branch collapsed)
            terms = {**terms, "std_a": float(za.detach().std(0).mean()), "std_b": float(zb.detach().std(0).mean())}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(task, advance=1, description=f"{config.method} ep {epoch + 1} loss {float(loss.detach()):.3f}")
        row = {k: v / max(1, steps_per_epoch) for k, v in sums.items()}
        log.info("%s epoch %d/%d: %s", config.method, epoch + 1, config.epochs,
                 ", ".join(f"{k}={v:.4f}" for k, v in row.items()))
        return row

    t0 = time.time()
    # no validation split: every epoch runs and the last weights are kept (the engine's loop without a scorer)
    with progress(disable=disable) as bar:
        task = bar.add_task(f"training {config.method}", total=total, unit="step")
        res = fit_epochs({"nets": nets}, train_epoch, config.epochs, stage=config.method,
                         precision=single_process(config.runtime, config.method))
    # history rows as before: the terms, then the epoch counted from 1
    history = [{**{k: v for k, v in r.items() if k != "epoch"}, "epoch": r["epoch"] + 1} for r in res.history]
    nets.eval()
    return nets, {"history": history, "stats": stats, "steps": total, "seconds": time.time() - t0}


def config_hash(config: MFLConfig, extra: dict[str, Any]) -> str:
    blob = json.dumps({"config": config.model_dump(mode="json"), **extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def default_encoder_id(config: MFLConfig) -> str:
    short = "mfl" if config.method == "more-from-less" else "sslhe"
    return f"{short}-{config.loss}-{config.arch}-e{config.epochs}-s{config.seed}"


def save_encoder(
    out_dir: Path, nets: Branches, config: MFLConfig, info: dict[str, Any], provenance: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write the model folder atomically: build it under a temporary name beside ``out_dir`` and rename.

    Files (named by :class:`histokd.workspace.EncoderFiles`): ``model.pt`` (state dicts ``he_encoder``,
    ``he_projector``, and for MFL ``dense_encoder``, ``dense_projector``), ``config.yaml`` (the
    :class:`MFLConfig` plus ``encoder`` (what ``mfl:`` rebuilds), ``provenance.json`` and ``metrics.json``
    (loss history).
    """
    import yaml

    import histokd

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise InputError(f"{out_dir}: encoder folder exists; pass --overwrite or choose another --id")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out_dir.parent)  # what a killed run of this command left
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out_dir.name), suffix=".tmp", dir=out_dir.parent))
    try:
        files = EncoderFiles(tmp)
        states = {k: v.state_dict() for k, v in nets.named_children()}
        torch.save(states, files.weights)
        weights_hash = hashlib.sha256(files.weights.read_bytes()).hexdigest()[:16]
        doc = {
            "kind": "histokd-encoder",
            "method": config.method,
            "config": config.model_dump(mode="json"),
            "encoder": {
                "arch": config.arch,
                "in_channels": 3,
                "dim": nets.he_encoder.dim,
                "input_size": config.tile_size,
                "mpp": config.mpp,
                "mean": info["stats"]["he_mean"],
                "std": info["stats"]["he_std"],
                "weights_hash": weights_hash,
            },
            "histokd_version": histokd.__version__,
        }
        if nets.dense_encoder is not None:
            doc["dense"] = {
                "in_channels": nets.dense_encoder.in_channels,
                "mean": info["stats"]["dense_mean"],
                "std": info["stats"]["dense_std"],
            }
        files.config.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        prov = {
            **provenance,
            "weights_hash": weights_hash,
            "histokd_version": histokd.__version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "train_seconds": round(float(info["seconds"]), 2),
            "steps": info["steps"],
        }
        files.provenance.write_text(json.dumps(prov, indent=2, sort_keys=True, default=str) + "\n")
        files.metrics.write_text(json.dumps({"history": info["history"]}, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
