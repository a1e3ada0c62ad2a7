"""``histokd train-encoder`` (More From Less / H&E-only SSL), ``histokd probe`` and ``histokd compare-encoders``."""

from __future__ import annotations

from pathlib import Path

import typer

from histokd.cli._common import run_command


def register(app: typer.Typer) -> None:
    @app.command("train-encoder")
    @run_command
    def train_encoder(
        workspace: Path = typer.Option(..., "--workspace", "-w", help="Run folder (tiled; cohort with paired_path)."),
        method: str = typer.Option("more-from-less", "--method", help="more-from-less | ssl-he."),
        loss: str = typer.Option("vicreg", "--loss", help="vicreg | barlow."),
        arch: str = typer.Option("tiny", "--arch", help="CNN: tiny | small | resnet18."),
        epochs: int = typer.Option(5, "--epochs", help="Passes over the sampled tiles."),
        max_epochs: int = typer.Option(None, "--max-epochs", help="Caps --epochs (as in histokd train)."),
        batch_size: int = typer.Option(128, "--batch-size", "-b", help="Pairs per step."),
        tile_size: int = typer.Option(64, "--tile-size", help="Tile side in px."),
        mpp: float = typer.Option(None, "--mpp", help="Tile resolution µm/px (default: tile-size px cover the grid tile)."),
        max_tiles: int = typer.Option(4000, "--max-tiles", help="Tiles sampled over the training slides."),
        lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate (AdamW, warm-up then cosine)."),
        splits: str = typer.Option("train", "--splits", help="Comma-separated splits whose slides train the encoder."),
        shared_geometry: bool = typer.Option(False, "--shared-geometry", help="Same flips/rotation/crop for both branches."),
        seed: int = typer.Option(0, "--seed", help="Seed for tile sampling, augmentations and initialisation."),
        encoder_id: str = typer.Option(None, "--id", help="Folder name under RUN/encoders/ (default from the config)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing encoder folder."),
        threads: int = typer.Option(None, "--threads", help="Torch CPU threads (1 is fastest on a loaded CPU)."),
        precision: str = typer.Option(None, "--precision", help="auto, 32-true or bf16-mixed (as in histokd train)."),
        wait: bool = typer.Option(False, "--wait", help="Wait for another run saving an encoder (default: stop)."),
    ) -> None:
        """Train an H&E encoder with paired dense data (More From Less) or H&E alone (ssl-he) -> RUN/encoders/<id>/."""
        from histokd.pipeline.train_encoder import train_encoder as run

        out = run(
            workspace, method=method, epochs=epochs, batch_size=batch_size, tile_size=tile_size, mpp=mpp,
            max_tiles=max_tiles, seed=seed, loss=loss, encoder_id=encoder_id, overwrite=overwrite, arch=arch, lr=lr,
            splits=[s.strip() for s in splits.split(",") if s.strip()], shared_geometry=shared_geometry,
            threads=threads, max_epochs=max_epochs, wait=wait,
            **({"runtime": {"precision": precision}} if precision else {}),
        )
        typer.echo(f"{out}: use it with `histokd embed -w {workspace} --encoder mfl:{out}`")

    @app.command()
    @run_command
    def probe(
        workspace: Path = typer.Option(..., "--workspace", "-w", help="Run folder with features and masks."),
        features: str = typer.Option(..., "--features", "-f", help="Encoder spec the features were made with."),
        threshold: float = typer.Option(0.5, "--threshold", help="A tile is tumour when its mask fraction is above this."),
        c: float = typer.Option(None, "--C", help="Inverse L2 strength (default: chosen by slide-grouped CV on train)."),
        seed: int = typer.Option(0, "--seed"),
        n_boot: int = typer.Option(1000, "--bootstrap", min=1, help="Bootstrap resamples for the 95% CIs."),
    ) -> None:
        """Linear probe on tile labels (train split -> test split) -> RUN/probes/<encoder>.json."""
        from histokd.pipeline.probe import linear_probe

        r = linear_probe(workspace, features, threshold=threshold, seed=seed, C=c, n_boot=n_boot)
        typer.echo(
            f"{features}: AUC {r.auc:.3f} (95% CI {r.auc_ci95[0]:.3f}-{r.auc_ci95[1]:.3f})  balanced acc {r.balanced_accuracy:.3f} "
            f"(95% CI {r.balanced_accuracy_ci95[0]:.3f}-{r.balanced_accuracy_ci95[1]:.3f}, p >= {r.decision_threshold:.3g}, "
            f"C {r.C:g})  acc {r.accuracy:.3f}  "
            f"({r.n_train} train / {r.n_test} test tiles, {r.pos_test} tumour)"
        )

    @app.command("compare-encoders")
    @run_command
    def compare_encoders(
        workspace: Path = typer.Option(..., "--workspace", "-w", help="Run folder (tiled, with masks and splits)."),
        encoders: list[str] = typer.Option(..., "--encoder", "-e", help="Encoder spec; repeat for each encoder."),
        mil: str = typer.Option("abmil", "--mil", help="MIL method for bag/instance AUC, or 'none' for the probe only."),
        seed: int = typer.Option(0, "--seed"),
        workers: int = typer.Option(0, "--workers", "-j", help="Tile-reading workers for embed."),
        n_boot: int = typer.Option(1000, "--bootstrap", min=1,
                                   help="Bootstrap resamples for the 95% CIs (probe and MIL metrics)."),
    ) -> None:
        """Probe (and MIL) every encoder; print the table and write RUN/probes/comparison.{json,md}."""
        from histokd.pipeline.probe import compare_encoders as run

        _, table = run(workspace, encoders, mil_method=None if mil == "none" else mil, seed=seed,
                       embed_kwargs={"workers": workers}, n_boot=n_boot)
        typer.echo(table)
