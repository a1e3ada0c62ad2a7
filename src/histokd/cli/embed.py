"""``histokd embed`` (tile features) and ``histokd import-features`` (CLAM/TRIDENT folders)."""

from __future__ import annotations

from pathlib import Path

import typer

from histokd.cli._common import CONFIG_HELP, SET_HELP, fail_summary, run_command, stage_settings


def register(app: typer.Typer) -> None:
    @app.command()
    @run_command
    def embed(
        ctx: typer.Context,
        workspace: Path = typer.Option(..., "--workspace", "-w", help="Run folder (tiled with `histokd tile`)."),
        encoder: str = typer.Option(
            "efficientnet_lite0", "--encoder", "-e",
            help="handcrafted | efficientnet_lite0 | timm:<name> | torchscript:<file> | mfl:<model dir>.",
        ),
        batch_size: int = typer.Option(64, "--batch-size", "-b", help="Tiles per forward pass."),
        workers: int = typer.Option(2, "--workers", "-j", help="Tile-reading worker processes (0: read in the main process)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
        precision: str = typer.Option(
            "fp32", "--precision", help="fp32 | bf16 | fp16 | int8 (PyTorch autocast bf16 / fp16, fp16 needs a GPU; OpenVINO: fp32; "
                 "ONNX Runtime: fp32 | int8).",
        ),
        runtime: str = typer.Option(
            "auto", "--runtime",
            help="auto (on CPU where the encoder exports: OpenVINO, else ONNX Runtime; else PyTorch) | torch | onnx "
                 "| openvino.",
        ),
        dtype: str = typer.Option("float32", "--dtype", help="Stored feature dtype: float32 | float16."),
        engine: str = typer.Option("local", "--engine", help="local | ray (spread slides over a Ray cluster)."),
        address: str = typer.Option(None, "--address", help="Ray cluster address (default: start a local one)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Redo slides whose features already exist."),
        wait: bool = typer.Option(False, "--wait", help="Wait for another run writing the same folder (default: stop)."),
        weights: str = typer.Option(None, "--weights", help="Weights file (state dict) overriding the encoder's own."),
        stain_norm: str = typer.Option("none", "--stain-norm", help="none | reinhard | macenko."),
        threads: int = typer.Option(None, "--threads", help="CPU threads for the encoder, PyTorch or ONNX Runtime (default: torch's)."),
        config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
        set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
    ) -> None:
        """Extract tile features for every tiled slide -> RUN/features/<encoder>/<slide>.h5."""
        from histokd.pipeline.configs import EmbedConfig
        from histokd.pipeline.embed import embed as run

        cfg = stage_settings(
            ctx, EmbedConfig, config, set_, encoder=encoder, weights=weights, batch_size=batch_size, workers=workers,
            device=device, precision=precision, runtime=runtime, dtype=dtype, engine=engine, address=address,
            overwrite=overwrite, wait=wait, stain_norm=None if stain_norm == "none" else stain_norm, threads=threads,
        )
        res = run(workspace, **cfg.model_dump())
        typer.echo(
            f"{res.out_dir}: {len(res.written)} written, {len(res.skipped)} skipped (done before), "
            f"{len(res.failed)} failed; {res.n_tiles} tiles at {res.tiles_per_s:.1f} tiles/s ({res.runtime})"
            + (f"; ONNX export {res.export_seconds:.1f} s (cached for later runs)" if res.export_seconds else "")
        )
        fail_summary(res.failed, len(res.written) + len(res.skipped) + len(res.failed))

    @app.command("import-features")
    @run_command
    def import_features(
        src_dir: Path = typer.Argument(..., help="CLAM output (h5_files/, pt_files/) or TRIDENT features_<enc>/ folder."),
        workspace: Path = typer.Option(..., "--workspace", "-w", help="Run folder to register the features in."),
        name: str = typer.Option(..., "--name", help="Feature set name: RUN/features/<name>/ (use it as --features)."),
        format: str = typer.Option("auto", "--format", help="auto | clam | trident."),  # noqa: A002
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace files already imported."),
        wait: bool = typer.Option(False, "--wait", help="Wait for another run writing the same folder (default: stop)."),
    ) -> None:
        """Register existing CLAM/TRIDENT feature files as feature set RUN/features/<name>/."""
        from histokd.features.importer import import_features as run

        res = run(src_dir, workspace, name, format=format, overwrite=overwrite, wait=wait)
        typer.echo(f"{res.out_dir}: {len(res.imported)} {res.format} file(s) imported, {res.dim}-d; {len(res.failed)} failed")
        fail_summary(res.failed, len(res.imported) + len(res.failed), what="files")
