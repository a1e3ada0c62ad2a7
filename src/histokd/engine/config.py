"""Trainer settings shared by every method (optimiser, epochs, early stopping, devices, precision)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from histokd.engine.runtime import RuntimeConfig


class TrainerConfig(RuntimeConfig):
    """The bag-batch loop's settings; accelerator, devices, nodes, strategy and precision come from
    :class:`~histokd.engine.runtime.RuntimeConfig`."""

    max_epochs: int = 50
    min_epochs: int = 1  # early stopping never triggers before this
    patience: int = 10  # epochs without validation improvement before stopping
    monitor: Literal["loss", "auc"] = "loss"  # validation quantity for early stopping + checkpoint choice
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 2e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # SGD only
    # cosine: per-step decay to min_lr_ratio * lr at max_epochs
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = 0.0  # linear warm-up from 0 over this many epochs (either schedule)
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    batch_size: int = 1  # bags per optimisation step (packed with segment ids, or padded + masked)
    # packed: models with a packed form (ABMIL, gated ABMIL, mean / max pooling) on one device train on packed
    # bags (engine.side_by_side); padded: always the padded-batch Fabric loop
    bag_packing: Literal["auto", "padded"] = "auto"
    max_instances: int | None = 8192  # training-time cap: bigger bags are randomly subsampled each epoch
    # training only: each bag keeps a random (1 - p) of its tiles, redrawn every epoch
    instance_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    class_weights: Literal["balanced", "none"] | list[float] = "balanced"
    grad_clip: float | None = None
    deterministic: bool = True
    num_workers: int = 0
    cpu_threads: int | Literal["auto"] = "auto"  # torch threads while training on CPU; auto: 1 for small models
    predict_chunk: int = 4096  # instances per chunk for instance logits at prediction
