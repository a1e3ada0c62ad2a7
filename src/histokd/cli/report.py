"""``histokd report``: heatmaps, QuPath GeoJSON, tiles.csv and a self-contained HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from histokd.cli._common import CONFIG_HELP, SET_HELP, fail_summary, run_command, stage_settings


def register(app: typer.Typer) -> None:
    @app.command()
    @run_command
    def report(
        ctx: typer.Context,
        workspace: Path = typer.Option(..., "--workspace", "-w", help="Run folder (RUN)."),
        model: str = typer.Option(..., "--model", "-m", help="Model id whose predictions are reported."),
        slides: list[str] = typer.Option(None, "--slides", "-s", help="Only these slide ids (repeatable)."),
        top_k: int = typer.Option(8, "--top-k", min=0, help="Highest / lowest tiles shown per slide."),
        threshold: float = typer.Option(None, "--threshold", min=0.0, max=1.0,
                                        help="Tumour probability for regions (default: from metrics.json, else 0.5)."),
        thumbnail_size: int = typer.Option(1024, "--thumbnail-size", min=64, help="Longer side of heatmap thumbnails (px)."),
        n_boot: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for the 95% CIs."),
        n_boot_old: int = typer.Option(None, "--n-boot", min=0, hidden=True,
                                       help="Deprecated spelling of --bootstrap."),
        view: str = typer.Option(None, "--view",
                                 help="Link each slide to its view: a `histokd view --export` folder or a viewer's "
                                      "http(s) address (default: RUN/view/ where it holds an export)."),
        wait: bool = typer.Option(False, "--wait", help="Wait for another run writing the same folder (default: stop)."),
        config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
        set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    ) -> None:
        """Write RUN/reports/<model>/: index.html, heatmaps/, geojson/ (QuPath), tiles.csv, plots/.

        Slides that cannot be reported are listed in the report and make the exit code 1, each with its line."""
        from histokd.pipeline.configs import ReportConfig
        from histokd.pipeline.report import run_report

        values = dict(slides=slides or None, top_k=top_k, threshold=threshold, thumbnail_size=thumbnail_size,
                      n_boot=n_boot, wait=wait, view=view)
        cfg = stage_settings(ctx, ReportConfig, config, set_, **values)
        if n_boot_old is not None:
            typer.echo("warning: --n-boot is deprecated; use --bootstrap (as in `histokd label`)", err=True)
            cfg.n_boot = n_boot_old
        res = run_report(workspace, model, **cfg.model_dump())
        typer.echo(f"report: {res.index.resolve()}")
        fail_summary(res.failures, res.n_total)
