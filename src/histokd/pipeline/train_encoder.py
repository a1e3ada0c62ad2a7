"""``histokd encoder train`` / ``histokd.train_encoder(...)``: a More From Less or H&E-only SSL encoder
trained on a tiled workspace -> ``RUN/encoders/<id>/``.

The losses, augmentations, networks and model folder are :mod:`histokd.methods.more_from_less`'s; here
the paired tiles are read from the workspace's slides and the folder is written with its provenance.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from histokd.config import validate_config
from histokd.engine.runtime import single_process
from histokd.errors import InputError
from histokd.methods.more_from_less import (
    MFL_METHODS,
    MFLConfig,
    config_hash,
    default_encoder_id,
    fit_encoders,
    save_encoder,
)
from histokd.workspace import Workspace, check_id

log = logging.getLogger("histokd")


def train_encoder(
    workspace: str | os.PathLike[str] | Workspace,
    method: str = "more-from-less",
    epochs: int = 5,
    batch_size: int = 128,
    tile_size: int = 64,
    mpp: float | None = None,
    max_tiles: int = 4000,
    seed: int = 0,
    loss: str = "vicreg",
    encoder_id: str | None = None,
    overwrite: bool = False,
    show_progress: bool | None = None,
    threads: int | None = None,
    max_epochs: int | None = None,
    wait: bool = False,
    **overrides: Any,
) -> Path:
    """Train a More From Less (``more-from-less``) or H&E-only SSL (``ssl-he``) encoder on a tiled workspace.

    Tiles: up to ``max_tiles`` of ``tile_size`` px at ``mpp`` µm/px, centred on the tiling grid of the
    slides in ``splits`` (default: train), the same tiles for both methods at a given seed. ``mpp=None``
    picks the resolution at which ``tile_size`` px cover the grid's tile, which is how ``histokd embed``
    will read tiles for this encoder (the whole grid tile resized to ``tile_size``). Returns the model
    folder ``RUN/encoders/<id>/``, usable as ``histokd embed --encoder mfl:<folder>``. ``max_epochs`` caps
    ``epochs`` (``--max-epochs``, as for every ``histokd train`` stage); ``runtime={"precision": ...}``
    (``--precision``) is every method's :class:`~histokd.engine.runtime.RuntimeConfig`.
    """
    from histokd.engine.epochs import stage_epochs

    epochs = stage_epochs(epochs, max_epochs)
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    if method not in MFL_METHODS:
        raise InputError(f"unknown encoder method {method!r}; choose one of: {', '.join(MFL_METHODS)}")
    grid_extent_um = _grid_extent_um(ws)
    if mpp is None:
        mpp = grid_extent_um / tile_size
    elif abs(tile_size * mpp - grid_extent_um) > 1e-3 * grid_extent_um:
        log.warning(
            "train-encoder: tiles of %d px at %.3g µm/px cover %.1f µm but the tiling grid's tiles cover %.1f µm; "
            "`histokd embed` reads the grid tile resized to %d px, so the encoder will see another scale",
            tile_size, mpp, tile_size * mpp, grid_extent_um, tile_size,
        )
    config = validate_config(MFLConfig, dict(method=method, loss=loss, epochs=epochs, batch_size=batch_size,
                                             tile_size=tile_size, mpp=mpp, max_tiles=max_tiles, seed=seed,
                                             **overrides), source="train-encoder options")
    single_process(config.runtime, method)  # refused before any tile is read
    from histokd.data.paired import load_paired_tiles

    tiles = load_paired_tiles(
        ws, config.tile_size, config.mpp, config.max_tiles, config.seed, tuple(config.splits),
        with_dense=config.method == "more-from-less", show_progress=show_progress,
    )
    log.info("%s: %d tiles of %d px at %.3g µm/px from %d slides", method, len(tiles), tile_size, mpp,
             len(set(tiles.slide_ids.tolist())))
    nets, info = fit_encoders(tiles.he, tiles.dense, config, show_progress=show_progress, threads=threads)
    coords_hash = hashlib.sha256(tiles.coords.tobytes() + "|".join(tiles.slide_ids).encode()).hexdigest()[:16]
    eid = check_id(encoder_id or default_encoder_id(config), "encoder id")
    provenance = {
        "workspace": str(ws.root.resolve()),
        "n_tiles": len(tiles),
        "slides": sorted(set(tiles.slide_ids.tolist())),
        "tiles_hash": coords_hash,
        "failed_slides": tiles.failures,
        "config_hash": config_hash(config, {"tiles": coords_hash}),
    }
    with ws.writer(ws.encoders_dir(), wait=wait):  # the save is atomic (a folder renamed into place); one saver at a time
        out = save_encoder(ws.encoder_files(eid).dir, nets, config, info, provenance, overwrite=overwrite)
    log.info("encoder saved to %s (use --encoder mfl:%s)", out, out)
    return out


def _grid_extent_um(ws: Workspace) -> float:
    """Side of the workspace's grid tiles in µm (``patch_size * target_mpp`` of the first tiles file)."""
    from histokd.slides.tiling import read_tiles

    files = sorted(ws.tiles_dir.glob("*.h5"))
    if not files:
        raise InputError(f"{ws.tiles_dir}: no tiles; run `histokd tile COHORT.csv -w {ws.root}` first")
    attrs = read_tiles(files[0]).attrs
    return float(attrs["patch_size"]) * float(attrs["target_mpp"])
