"""``histokd predict`` (a model bundle on new slides) and ``histokd export-model`` (a model folder as one archive)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from histokd.cli._common import CONFIG_HELP, SET_HELP, fail_summary, run_command, stage_settings


def register(app: typer.Typer) -> None:
    @app.command()
    @run_command
    def predict(
        ctx: typer.Context,
        model: str = typer.Option(..., "--model", "-m",
                                  help="Model bundle: a model folder (RUN/models/ID) or a .tar.gz from export-model."),
        slides: Optional[list[str]] = typer.Argument(
            None, help="Slide files, a folder of slides, or a cohort CSV (label optional; patient_id aggregates "
                       "per patient)."),
        slides_opt: Optional[list[str]] = typer.Option(None, "--slides", "-s",
                                                       help="Same as the SLIDES arguments (repeatable)."),
        workspace: Path = typer.Option(..., "--workspace", "-w", help="Run folder for the outputs (created)."),
        workers: int = typer.Option(2, "--workers", "-j", help="Slides tiled / tiles read in parallel."),
        batch_size: int = typer.Option(64, "--batch-size", "-b", help="Tiles per forward pass of the encoder."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
        runtime: str = typer.Option("auto", "--runtime", help="Encoder runtime: auto | torch | onnx | openvino."),
        slide_mpp: Optional[float] = typer.Option(None, "--slide-mpp",
                                                  help="Level-0 µm/px for slides without resolution metadata."),
        backend: str = typer.Option("auto", "--backend", help="Slide reader: auto, openslide or tiffslide."),
        n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% CIs (labelled slides)."),
        no_report: bool = typer.Option(False, "--no-report", help="Skip the HTML report."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Redo every stage instead of resuming."),
        wait: bool = typer.Option(False, "--wait", help="Wait for another run writing the same folder (default: stop)."),
        config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
        set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    ) -> None:
        """Tile, embed, label and report new slides with a model bundle's own settings -> RUN/predictions/ID/slides.csv.

        Resumable; a bad slide fails alone (exit 1, one line each). Each slide gets an out-of-distribution flag."""
        from histokd.errors import InputError
        from histokd.pipeline.configs import PredictConfig
        from histokd.pipeline.predict import predict as run

        given = [*(slides or []), *(slides_opt or [])]
        if not given:
            raise InputError("no slides given; name slide files, a folder of slides or a cohort CSV (or --slides ...)")
        cfg = stage_settings(ctx, PredictConfig, config, set_, {"report": "no_report"}, workers=workers,
                             batch_size=batch_size, device=device, runtime=runtime, slide_mpp=slide_mpp,
                             backend=backend, overwrite=overwrite, n_boot=n_boot, report=not no_report, wait=wait)
        res = run(model, given, workspace, **cfg.model_dump())
        typer.echo(f"model {res.model_id}: {res.n_predicted} of {res.n_total} slide(s) predicted, "
                   f"{res.n_ood} out of distribution")
        if not res.labelled:
            typer.echo("no labels: no metrics")
        else:
            for split, m in res.metrics.get("splits", {}).items():
                if "auc" in m:
                    typer.echo(f"{split:<6} n={m['n_bags']}  auc={m['auc']['value']:.3f}  "
                               f"accuracy={m['accuracy']['value']:.3f}")
        for what, path in (("slides", res.slides_csv), ("patients", res.patients_csv), ("report", res.report)):
            if path is not None:
                typer.echo(f"{what}: {Path(path).resolve()}")
        fail_summary(res.failures, res.n_total)

    @app.command("export-model")
    @run_command
    def export_model(
        workspace: Path = typer.Option(..., "--workspace", "-w", help="Run folder."),
        model: str = typer.Option(..., "--model", "-m", help="Model id under RUN/models/."),
        out: Path = typer.Option(..., "--out", "-o", help="Archive to write (.tar.gz)."),
        include_cohort: bool = typer.Option(False, "--include-cohort",
                                            help="Also pack the files naming the training slides (splits, metrics, log)."),
    ) -> None:
        """Pack RUN/models/ID/ into one .tar.gz (weights, config, classes, bundle.json; no slide ids by default)."""
        from histokd.pipeline.bundle import export_model as run
        from histokd.workspace import Workspace

        path = run(Workspace(workspace), model, out, include_cohort=include_cohort)
        typer.echo(str(path))
