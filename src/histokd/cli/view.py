"""``histokd view``: a local deep-zoom viewer of a workspace's slides with every model's overlays, or its static export."""

from __future__ import annotations

from pathlib import Path

import typer

from histokd.cli._common import fail_summary, run_command


def register(app: typer.Typer) -> None:
    @app.command()
    @run_command
    def view(
        workspace: Path = typer.Option(..., "--workspace", "-w", help="Run folder (RUN)."),
        model: list[str] = typer.Option(None, "--model", "-m",
                                        help="Model ids to show (repeatable; default: every model with predictions)."),
        port: int = typer.Option(0, "--port", min=0, max=65535, help="Port to listen on (0: a free one)."),
        host: str = typer.Option("127.0.0.1", "--host",
                                 help="Address to listen on (default: this machine only)."),
        open_browser: bool = typer.Option(False, "--open", help="Open the address in a browser."),
        export: Path = typer.Option(None, "--export", help="Write a static export into this folder instead of serving."),
        max_level: int = typer.Option(None, "--max-level", min=0,
                                      help="With --export: deepest deep-zoom level written (default: full resolution)."),
        annotations: Path = typer.Option(None, "--annotations",
                                         help="Folder of <slide>.geojson (QuPath) or <slide>.xml (ASAP) annotations, "
                                              "drawn as contours."),
    ) -> None:
        """Serve a local viewer of RUN's slides: deep zoom, every model's tile probabilities and evidence, ground truth,
        tissue and tile grid as overlays; the address carries a random token. With --export, write it as static files."""
        from histokd.pipeline.view import export as export_view
        from histokd.pipeline.view import serve

        if export is not None:
            res = export_view(workspace, export, models=model or None, max_level=max_level, announce=typer.echo,
                              annotations=annotations)
            typer.echo(f"view export: {res.index.resolve()}  (serve the folder with any static web server, e.g. "
                       f"`python -m http.server -d {export}`); `histokd report` links each slide to it "
                       f"(it finds RUN/view/ itself; elsewhere give --view {export})")
            fail_summary(res.failures, res.n_total)
            return
        if max_level is not None:
            typer.echo("warning: --max-level only applies with --export", err=True)
        serve(workspace, models=model or None, host=host, port=port, open_browser=open_browser, announce=typer.echo,
              annotations=annotations)
