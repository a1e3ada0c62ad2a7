"""``histokd synth``: generate a synthetic Camelyon16-style cohort."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from histokd.cli._common import fail_summary, run_command


def register(app: typer.Typer) -> None:
    @app.command()
    @run_command
    def synth(
        out: Path = typer.Argument(..., help="Output folder (created); gets cohort.csv, slides/, paired/, "
                                             "masks/, annotations/, meta/."),
        slides: int = typer.Option(16, "--slides", "-n", help="Number of slides (about half with tumour)."),
        seed: int = typer.Option(0, "--seed", help="Cohort seed: same seed, same pixels."),
        preset: str = typer.Option("easy", "--preset", help="easy | camelyon | hard."),
        size: int = typer.Option(None, "--size", help="Level-0 side in px (default 4096; multiple of 16)."),
        workers: int = typer.Option(None, "--workers", "-j", help="Worker processes (default: all CPUs)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Redraw slides that already exist."),
        set_: list[str] = typer.Option(
            None, "--set",
            help="Override a preset knob, NAME=VALUE (repeatable), e.g. --set lesion_count=1,2.",
        ),
    ) -> None:
        """Generate a synthetic cohort: pyramidal H&E TIFFs at 0.25/0.5 µm/px, paired multiplex TIFFs,
        tumour masks (PNG + GeoJSON), per-slide metadata and cohort.csv."""
        from histokd.synth.generate import generate_cohort
        from histokd.synth.params import parse_override

        overrides = dict(parse_override(s) for s in (set_ or []))
        t0 = time.perf_counter()
        res = generate_cohort(out, slides=slides, seed=seed, preset=preset, size=size, workers=workers,
                              overwrite=overwrite, overrides=overrides)
        fail_summary(res.failures, slides)
        n_pos = sum(r["label"] == "tumour" for r in res.rows)
        typer.echo(f"wrote {res.csv_path} ({slides} slides, {n_pos} tumour, {slides - n_pos} normal; "
                   f"{res.skipped} kept from a previous run) in {time.perf_counter() - t0:.1f} s")
