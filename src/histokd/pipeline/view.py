"""``histokd view`` / ``histokd.pipeline.view``: the local slide viewer of a workspace, or its static export.

:func:`serve` runs the viewer app (:mod:`histokd.viewer.app`) on uvicorn, bound to 127.0.0.1 by default, at
``http://HOST:PORT/<token>/`` with a random token per run; :func:`export` writes a static copy
(:mod:`histokd.viewer.export`). See ``docs/viewer.md``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from histokd.errors import InputError
from histokd.progress import progress
from histokd.viewer.assets import require_assets
from histokd.viewer.catalog import Catalog
from histokd.workspace import Workspace

log = logging.getLogger("histokd")


@dataclass
class ExportResult:
    index: Path
    estimate: str
    failures: dict[str, str] = field(default_factory=dict)
    n_total: int = 0


def _catalog(workspace: str | os.PathLike[str] | Workspace, models: list[str] | None,
             annotations: str | os.PathLike[str] | None = None) -> Catalog:
    cat = Catalog(workspace, models=list(models) if models else None, annotations=annotations)
    if not cat.slides:
        raise InputError(f"{cat.ws.cohort_csv}: the workspace cohort has no slides; run `histokd tile` first")
    return cat


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one); one line when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio turns Nagle's algorithm off only on sockets whose proto is IPPROTO_TCP; with it on, every
    # response on a kept-alive connection waited ~40 ms for the browser's delayed ACK (headers and body are two writes)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"{host}:{port}: cannot listen there ({e.strerror or e}); choose another --port "
                         f"(0 picks a free one) or --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(
    workspace: str | os.PathLike[str] | Workspace,
    models: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    open_browser: bool = False,
    announce: Callable[[str], None] = print,
    annotations: str | os.PathLike[str] | None = None,
) -> None:
    """Serve the viewer until interrupted; ``announce`` gets the address (with its token) once it listens.
    ``annotations``: a folder of ``<slide>.geojson`` / ``.xml`` files drawn as contours."""
    import uvicorn

    from histokd.viewer.app import create_app, new_token

    catalog = _catalog(workspace, models, annotations)  # the workspace's own errors first
    assets = require_assets()
    token = new_token()
    app = create_app(catalog, token, assets)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/{token}/"
    n_s, n_m = len(catalog.slides), len(catalog.models)
    announce(f"histokd view: {n_s} slide{'s' * (n_s != 1)}, {n_m} model{'s' * (n_m != 1)}; open {url}  (Ctrl-C stops)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("view: listening on %s: anyone who can reach it and has the address can see the slides", host)
    if open_browser:
        import webbrowser

        if not webbrowser.open(url):
            log.warning("view: no browser found here; open the address above yourself")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def export(
    workspace: str | os.PathLike[str] | Workspace,
    out: str | os.PathLike[str],
    models: list[str] | None = None,
    max_level: int | None = None,
    announce: Callable[[str], None] = print,
    annotations: str | os.PathLike[str] | None = None,
) -> ExportResult:
    """Write a static export of the viewer into ``out`` (see :mod:`histokd.viewer.export`); ``announce`` gets the
    size estimate before anything is written. Returns ``out/index.html`` and the slides that failed."""
    from histokd.viewer.export import plan_export, write_export

    if max_level is not None and max_level < 0:
        raise InputError(f"--max-level {max_level}: must be 0 or more (0 = one pixel); leave it out for full resolution")
    catalog = _catalog(workspace, models, annotations)  # the workspace's own errors first
    assets = require_assets()
    plan = plan_export(catalog, max_level, assets=assets)
    announce(f"histokd view --export: {plan.describe()} -> {Path(out)}")
    with progress() as bar:
        task = bar.add_task("export", total=plan.slide_tiles + plan.overlay_tiles, unit="tile")
        failures = write_export(catalog, Path(out), assets, plan, max_level,
                                advance=lambda n: bar.advance(task, n))
    return ExportResult(Path(out) / "index.html", plan.describe(), failures, len(catalog.slides))
