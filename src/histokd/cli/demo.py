"""``histokd demo``: the whole pipeline on the built-in synthetic cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from histokd.cli._common import run_command


def register(app: typer.Typer) -> None:
    @app.command()
    @run_command
    def demo(
        out: Path = typer.Option(Path("demo_run"), "--out", "-o", help="Folder for the cohort and the run."),
        slides: int = typer.Option(32, help="Number of synthetic slides (half tumour; 50/25/25 train/val/test)."),
        seed: int = typer.Option(0, help="Seed for the cohort and training."),
        preset: str = typer.Option("camelyon", help="Synthetic preset: easy, camelyon or hard."),
        encoder: str = typer.Option("efficientnet_lite0", help="Tile encoder."),
        method: str = typer.Option("weno", help="Distillation method (weno, distill-to-label, or any MIL method)."),
        workers: int = typer.Option(2, help="Worker processes."),
    ) -> None:
        """Synthesise a cohort, tile, embed, train a distilled labeller, label every tile, write the report."""
        from histokd.pipeline.demo import demo as run_demo

        res = run_demo(out, slides=slides, seed=seed, preset=preset, encoder=encoder, method=method, workers=workers)
        total = sum(res.timings.values())
        for name, t in res.timings.items():
            typer.echo(f"  {name:<7} {t:7.1f} s")
        typer.echo(f"  {'total':<7} {total:7.1f} s")
        typer.echo(f"report: {res.report.resolve()}")
