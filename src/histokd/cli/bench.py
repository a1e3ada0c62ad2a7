"""``histokd bench``: methods x dataset x protocol, with a table and a JSON of means, stds and CIs."""

from __future__ import annotations

from pathlib import Path

import typer

from histokd.cli._common import run_command


def register(app: typer.Typer) -> None:
    @app.command()
    @run_command
    def bench(
        dataset: str = typer.Option(..., "--dataset", "-d",
                                    help="mil-csv:PATH|musk1|musk2, digit-bags[:target=9,...], workspace:RUN:ENC."),
        method: str = typer.Option("abmil", "--method", help="Comma-separated registered methods."),
        protocol: str = typer.Option("cv:10x5", "--protocol", "-p", help="cv:KxR or split."),
        json_out: Path = typer.Option(None, "--json", help="Write the full results here."),
        seed: int = typer.Option(0, "--seed"),
        set_: list[str] = typer.Option(None, "--set", help="Config override for every method, e.g. train.max_epochs=40."),
        val_fraction: float = typer.Option(0.0, "--val-fraction",
                                           help="Part of each training fold held out for early stopping (0: fixed epochs)."),
        engine: str = typer.Option("local", "--engine", help="local | ray (train the folds on a Ray cluster)."),
        address: str = typer.Option(None, "--address", help="Ray cluster address (default: start a local one)."),
        group: int = typer.Option(0, "--group", help="Folds trained side by side as one stacked model (1: one at a "
                                  "time; 0: automatic, every fold where the method can); a Ray task trains one group."),
    ) -> None:
        """Cross-validate METHODS on DATASET; print a table (mean ± std over folds) and write JSON."""
        from histokd.pipeline.bench import bench as bench_fn
        from histokd.pipeline.bench import format_table

        res = bench_fn(dataset, method, protocol, seed=seed, overrides=list(set_ or []), val_fraction=val_fraction,
                       json_out=json_out, engine=engine, address=address, group=group)
        typer.echo(f"{dataset}  {protocol}  seed {seed}")
        typer.echo(format_table(res))
