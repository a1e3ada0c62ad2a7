"""``histokd label``: bag + instance predictions for every slide, and their evaluation."""

from __future__ import annotations

from pathlib import Path

import typer

from histokd.cli._common import CONFIG_HELP, SET_HELP, fail_summary, run_command, stage_settings


def register(app: typer.Typer) -> None:
    @app.command()
    @run_command
    def label(
        ctx: typer.Context,
        workspace: Path = typer.Option(..., "--workspace", "-w", help="Run folder."),
        model: str = typer.Option(..., "--model", "-m", help="Model id under RUN/models/, or a model folder / .tar.gz from export-model (checked against the features)."),
        features: str = typer.Option(None, "--features", help="Feature set (default: the model's)."),
        overwrite: bool = typer.Option(False, "--overwrite"),
        wait: bool = typer.Option(False, "--wait", help="Wait for another run writing the same folder (default: stop)."),
        n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% CIs."),
        threshold: float = typer.Option(0.5, "--tumour-threshold", help="Tile tumour fraction above which it is positive."),
        seed: int = typer.Option(0, "--seed"),
        config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
        set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
    ) -> None:
        """Write RUN/predictions/ID/<slide>.h5, bags.csv and metrics.json; print the metrics per split."""
        from histokd.pipeline.configs import LabelConfig
        from histokd.pipeline.label import label as label_fn

        cfg = stage_settings(ctx, LabelConfig, config, set_, {"tumour_threshold": "threshold"}, features=features,
                             overwrite=overwrite, n_boot=n_boot, seed=seed, tumour_threshold=threshold, wait=wait)
        res = label_fn(workspace, model, **cfg.model_dump())
        for split, m in res.metrics.get("splits", {}).items():
            parts = [f"{split:<6} n={m['n_bags']}"]
            for k in ("auc", "accuracy", "balanced_accuracy", "f1"):
                if k in m:
                    v, (lo, hi) = m[k]["value"], m[k]["ci95"]
                    parts.append(f"{k}={v:.3f} [{lo:.3f},{hi:.3f}]")
            for src in ("instance_from_probs", "instance_from_scores"):
                if src in m:
                    parts.append(f"{src.replace('instance_from_', 'inst_auc_')}={m[src]['auc']:.3f}")
            typer.echo("  ".join(parts))
        typer.echo(str(res.directory))
        fail_summary(res.failures, res.n_total)
