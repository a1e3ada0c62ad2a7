"""One config model per per-slide stage: ``TileConfig``, ``EmbedConfig``, ``LabelConfig``, ``ReportConfig``,
``PredictConfig``.

Each is a :class:`~histokd.config.BaseConfig` (``extra="forbid"``): its fields are the stage verb's keyword
arguments, with the same names and defaults (``tests/pipeline/test_stage_configs.py`` holds this), so

* ``histokd.tile(cohort, run, **TileConfig(...).model_dump())`` is the same call as the keyword form, and the
  Python API keeps its keyword arguments unchanged;
* the CLI builds the config of its stage with :func:`stage_config` and calls the verb with it.

Precedence on the command line (lowest first): the defaults, ``--config FILE.yaml``, ``--set key=value``
(repeatable), and last the options given explicitly on the command line (``--mpp 0.25`` beats ``mpp: 0.5``
in the file). An unknown key or a value of the wrong type is refused with one line naming the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, field_validator

from histokd.config import BaseConfig, deep_merge, parse_overrides, read_yaml, validate_config

C = TypeVar("C", bound=BaseConfig)


class TileConfig(BaseConfig):
    """``histokd tile`` / :func:`histokd.pipeline.tile.tile` (the geometry is checked by ``TilingConfig``)."""

    mpp: float = 0.5
    size: int = 224
    overlap: int = 0
    min_tissue: float = 0.5
    workers: int = 2
    overwrite: bool = False
    slide_mpp: float | None = None
    tissue_mask_dir: Path | None = None
    backend: str = "auto"
    label_map: str | list[str] | dict[str, str] | None = None
    wait: bool = False


class EmbedConfig(BaseConfig):
    """``histokd embed`` / :func:`histokd.pipeline.embed.embed`."""

    encoder: str = "efficientnet_lite0"
    weights: str | None = None
    batch_size: int = 64
    workers: int = 2
    device: str = "auto"
    precision: str = "fp32"
    runtime: str = "auto"
    dtype: str = "float32"
    engine: str = "local"
    address: str | None = None
    overwrite: bool = False
    stain_norm: str | None = None
    slides: list[str] | None = None
    threads: int | None = None
    wait: bool = False

    @field_validator("stain_norm")
    @classmethod
    def _none_is_none(cls, v: str | None) -> str | None:
        return None if v is None or v.lower() == "none" else v


class LabelConfig(BaseConfig):
    """``histokd label`` / :func:`histokd.pipeline.label.label` (the model is the command's own option)."""

    features: str | None = None
    overwrite: bool = False
    n_boot: int = Field(1000, ge=0)
    seed: int = 0
    tumour_threshold: float = Field(0.5, ge=0.0, le=1.0)
    wait: bool = False


class ReportConfig(BaseConfig):
    """``histokd report`` / :func:`histokd.pipeline.report.run_report` (the model is the command's own option)."""

    slides: list[str] | None = None
    top_k: int = Field(8, ge=0)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    thumbnail_size: int = Field(1024, ge=64)
    n_boot: int = Field(1000, ge=0)
    seed: int = 0
    wait: bool = False
    view: str | None = None


class PredictConfig(BaseConfig):
    """``histokd predict`` / :func:`histokd.pipeline.predict.predict` (model, slides and workspace are inputs)."""

    workers: int = 2
    batch_size: int = 64
    device: str = "auto"
    runtime: str = "auto"
    slide_mpp: float | None = None
    backend: str = "auto"
    overwrite: bool = False
    n_boot: int = Field(1000, ge=0)
    report: bool = True
    wait: bool = False


STAGE_CONFIGS: dict[str, type[BaseConfig]] = {
    "tile": TileConfig, "embed": EmbedConfig, "label": LabelConfig, "report": ReportConfig,
    "predict": PredictConfig,
}


def stage_config(
    cls: type[C],
    config: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    explicit: dict[str, Any] | None = None,
) -> C:
    """``cls`` from its defaults < the YAML file ``config`` < ``overrides`` (``key=value``) < ``explicit``
    (the options given on the command line); one-line :class:`~histokd.errors.InputError` on a bad key."""
    data: dict[str, Any] = read_yaml(config) if config is not None else {}
    sources = [str(config)] if config is not None else []
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
        sources.append("--set")
    if explicit:
        data = deep_merge(data, explicit)
    return validate_config(cls, data, source=" + ".join(sources) or "options")
