"""``histokd tile``: tissue mask + tile grid per slide -> ``RUN/tiles/``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from histokd.cli._common import CONFIG_HELP, SET_HELP, fail_summary, run_command, stage_settings


def register(app: typer.Typer) -> None:
    @app.command()
    @run_command
    def tile(
        ctx: typer.Context,
        cohort: Path = typer.Argument(..., help="Cohort CSV: slide_id,path,label[,split,mask_path,...]."),
        workspace: Path = typer.Option(..., "--workspace", "-w", help="Run folder (created if needed)."),
        mpp: float = typer.Option(0.5, "--mpp", help="Target resolution of the tiles, µm/px."),
        size: int = typer.Option(224, "--size", help="Tile side in px at --mpp."),
        overlap: int = typer.Option(0, "--overlap", help="Overlap of neighbouring tiles, px at --mpp."),
        min_tissue: float = typer.Option(0.5, "--min-tissue", help="Minimum tissue fraction of a kept tile (0-1)."),
        workers: int = typer.Option(2, "--workers", "-j", help="Slides processed in parallel (processes)."),
        slide_mpp: Optional[float] = typer.Option(
            None, "--slide-mpp", help="Level-0 µm/px for slides without resolution metadata."),
        tissue_mask_dir: Optional[Path] = typer.Option(
            None, "--tissue-mask-dir",
            help="Folder of user tissue masks <slide_id>.png/.geojson replacing detection "
                 "(a tissue_mask_path cohort column wins)."),
        backend: str = typer.Option("auto", "--backend", help="Slide reader: auto, openslide or tiffslide."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Re-tile slides that are already up to date."),
        wait: bool = typer.Option(False, "--wait", help="Wait for another run writing the same folder (default: stop)."),
        label_map: Optional[list[str]] = typer.Option(
            None, "--label-map",
            help='Rename labels as the cohort is read, FROM=TO pairs: "tumor=tumour,Tumour=tumour" (repeatable).'),
        config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
        set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    ) -> None:
        """Detect tissue and write a tile grid per slide (RUN/tiles/<slide>.h5 + QC PNG). Resumable."""
        from histokd.pipeline.configs import TileConfig
        from histokd.pipeline.tile import tile as tile_api

        cfg = stage_settings(ctx, TileConfig, config, set_, mpp=mpp, size=size, overlap=overlap, min_tissue=min_tissue,
                             workers=workers, overwrite=overwrite, slide_mpp=slide_mpp,
                             tissue_mask_dir=tissue_mask_dir, backend=backend, label_map=label_map or None,
                             wait=wait)
        res = tile_api(cohort, workspace, **cfg.model_dump())
        n_new = sum(res.tiled.values())
        rate = n_new / res.seconds if res.seconds > 0 else 0.0
        typer.echo(
            f"tiled {len(res.tiled)} slide(s) ({n_new} tiles, {rate:.0f} tiles/s), "
            f"{len(res.skipped)} already up to date, {len(res.failures)} failed, in {res.seconds:.1f}s "
            f"-> {Path(workspace) / 'tiles'}"
        )
        fail_summary(res.failures, res.total)
