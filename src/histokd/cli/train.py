"""``histokd train``: fit a MIL teacher / distillation method on a workspace's features."""

from __future__ import annotations

from pathlib import Path

import typer

from histokd.cli._common import run_command


def register(app: typer.Typer) -> None:
    @app.command()
    @run_command
    def train(
        workspace: Path = typer.Option(..., "--workspace", "-w", help="Run folder."),
        method: str = typer.Option("abmil", "--method", help="Registered method (see --list-methods)."),
        features: str = typer.Option(None, "--features", help="Feature set under RUN/features/ (default: the only one)."),
        config: Path = typer.Option(None, "--config", help="YAML config of the method."),
        set_: list[str] = typer.Option(None, "--set", help="Override, e.g. --set train.lr=1e-3 (repeatable)."),
        seed: int = typer.Option(0, "--seed"),
        model_id: str = typer.Option(None, "--model-id", help="Model folder name (default METHOD-FEATURES-sSEED)."),
        devices: str = typer.Option(None, "--devices", help="Devices per node (e.g. 1, 2, auto)."),
        num_nodes: int = typer.Option(None, "--num-nodes"),
        strategy: str = typer.Option(None, "--strategy", help="auto, ddp, ddp_spawn, ..."),
        accelerator: str = typer.Option(None, "--accelerator", help="auto, cpu, cuda, mps."),
        max_epochs: int = typer.Option(None, "--max-epochs", help="Caps the epochs of every stage."),
        precision: str = typer.Option(None, "--precision",
                                      help="auto, 32-true, bf16-mixed, 16-mixed (GPU); every method."),
        overwrite: bool = typer.Option(False, "--overwrite"),
        wait: bool = typer.Option(False, "--wait", help="Wait for another run writing the same folder (default: stop)."),
        list_methods: bool = typer.Option(False, "--list-methods", help="Print the registered methods and exit."),
        teacher: str = typer.Option(None, "--teacher", help="Teacher model ID (ifkd): same as --set teacher=ID."),
    ) -> None:
        """Train METHOD on RUN/features/ENC -> RUN/models/ID/ (model.pt, config.yaml, metrics.json, train.log)."""
        import histokd.methods as M
        from histokd.pipeline.train import train as train_fn

        if list_methods:
            typer.echo("\n".join(M.METHODS.names()))
            return
        dev: int | str | None = int(devices) if devices and devices.isdigit() else devices
        overrides = list(set_ or []) + ([f"teacher={teacher}"] if teacher else [])
        out = train_fn(workspace, features=features, method=method, config=config, overrides=overrides,
                       seed=seed, model_id=model_id, devices=dev, num_nodes=num_nodes, strategy=strategy,
                       accelerator=accelerator, max_epochs=max_epochs, precision=precision, overwrite=overwrite,
                       wait=wait)
        typer.echo(str(out))
