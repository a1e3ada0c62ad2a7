"""The Starlette app behind ``histokd view``: read-only, every URL under ``/<token>/``.

URL layout (the same, relative to the page, as a static export's files):

* ``index.html`` (also ``/<token>/``), ``static/viewer.js``, ``static/viewer.css``, ``vendor/openseadragon/...``
* ``api/workspace.json``: models, layers, slides (:meth:`Catalog.workspace_json`)
* ``api/tiles/<slide>.json``: every tile with every model's scores (:meth:`Catalog.tiles_json`)
* ``dzi/<slide>.dzi`` and ``dzi/<slide>_files/<level>/<col>_<row>.jpeg``: the slide
* ``overlay/<model>/<layer>/<slide>_files/<level>/<col>_<row>.png[?t=THRESHOLD]``: an overlay (model ``_``
  for the workspace's ground truth, tissue and tile grid)

A request without the token gets 403; an unknown slide, model, layer, level or tile 404; a method other than
GET / HEAD 405. Errors are one line of plain text, never a traceback.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from histokd.errors import HistokdError, one_line
from histokd.viewer.catalog import LRU, Catalog
from histokd.viewer.deepzoom import DeepZoom, parse_tile_name
from histokd.viewer.page import STATIC_FILES, render_index

log = logging.getLogger("histokd")


#: the page runs only its own scripts and talks only to this server (defence in depth: it never builds markup
#: from workspace text); OpenSeadragon sets element styles, hence the inline styles
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")


def new_token() -> str:
    """A random token for one server run (as Jupyter's): 32 URL-safe characters."""
    return secrets.token_urlsafe(24)


class TokenGate:
    """ASGI middleware: only paths under ``/<token>/`` pass; anything else is 403."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            first = scope["path"].lstrip("/").split("/", 1)[0]
            if not hmac.compare_digest(first.encode(), self.token.encode()):
                resp = PlainTextResponse("forbidden: open the address (with its token) that `histokd view` printed\n",
                                         status_code=403)
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _not_found(what: str) -> HTTPException:
    return HTTPException(404, f"not found: {what}")


def _slide_of(catalog: Catalog, name: str, suffix: str) -> str:
    if not name.endswith(suffix) or name[: -len(suffix)] not in catalog.slides:
        raise _not_found("no such slide in this workspace")
    return name[: -len(suffix)]


def _tile_args(catalog: Catalog, files: str, level: str, tile: str, fmt: str) -> tuple[str, DeepZoom, int, int, int]:
    """(slide id, its pyramid, level, col, row) of a tile request; 404 for anything that is not a tile of the slide."""
    sid = _slide_of(catalog, files, "_files")
    ct = parse_tile_name(tile, fmt)
    if ct is None or not level.isdigit() or len(level) > 3:
        raise _not_found("no such tile")
    try:
        dz = catalog.deepzoom(sid)
    except HistokdError as e:
        raise _not_found(f"slide {sid} cannot be read ({e})") from None
    if not dz.valid(int(level), *ct):
        raise _not_found("no such level or tile")
    return sid, dz, int(level), ct[0], ct[1]


def _safe(fn: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """An endpoint whose errors are one line of text: HTTP errors as they are, a histokd error (a slide that cannot
    be read, a damaged file) and anything unexpected as 500, logged as one line, never a traceback."""

    @functools.wraps(fn)
    def wrapper(request: Request) -> Response:
        try:
            return fn(request)
        except HTTPException:
            raise
        except HistokdError as e:
            log.warning("view: %s", e)
            return PlainTextResponse(f"{one_line(e, 400)}\n", status_code=500)
        except Exception as e:  # a server answers every request; -v logs the traceback
            log.warning("view: %s: %s: %s", request.url.path, type(e).__name__, one_line(e, 200))
            log.debug("view: traceback", exc_info=True)
            return PlainTextResponse(f"internal error: {type(e).__name__}: {one_line(e, 200)}\n", status_code=500)

    return wrapper


def _deepzoom(catalog: Catalog, sid: str) -> DeepZoom:
    """The slide's deep-zoom source; a slide that cannot be read is a 404 with its one line."""
    try:
        return catalog.deepzoom(sid)
    except HistokdError as e:
        raise _not_found(f"slide {sid} cannot be read ({e})") from None


def _threshold_of(request: Request) -> float:
    """The overlay's probability threshold ``?t=`` in 0..1 (3 decimals; 0 when absent)."""
    try:
        t = float(request.query_params.get("t", "0"))
    except ValueError:
        raise _not_found("threshold t must be a number in 0..1") from None
    if not 0.0 <= t <= 1.0:
        raise _not_found("threshold t must be a number in 0..1")
    return round(t, 3)


def create_app(catalog: Catalog, token: str, assets: Path, tile_cache: int = 2048) -> Starlette:
    """The viewer app for ``catalog``; ``assets`` is the OpenSeadragon folder (:func:`assets.require_assets`)."""
    cache = LRU(tile_cache)
    index_html = render_index(static=False)

    def index(request: Request) -> Response:
        return Response(index_html, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                                 "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})

    def root(request: Request) -> Response:
        return RedirectResponse(f"/{token}/", status_code=307)

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            raise _not_found("no such file")
        path, media = STATIC_FILES[name]
        return Response(path.read_bytes(), media_type=media)

    def workspace(request: Request) -> Response:
        doc = cache.get(("workspace",), lambda: catalog.workspace_json(static=False))
        return JSONResponse(doc)

    def tiles(request: Request) -> Response:
        sid = _slide_of(catalog, request.path_params["name"], ".json")
        _deepzoom(catalog, sid)
        return JSONResponse(cache.get(("tiles", sid), lambda: catalog.tiles_json(sid)))

    def dzi(request: Request) -> Response:
        sid = _slide_of(catalog, request.path_params["name"], ".dzi")
        dz = _deepzoom(catalog, sid)
        return Response(dz.dzi_xml("jpeg"), media_type="application/xml")

    def slide_tile(request: Request) -> Response:
        p = request.path_params
        sid, _, level, col, row = _tile_args(catalog, p["files"], p["level"], p["tile"], "jpeg")
        data = cache.get(("slide", sid, level, col, row), lambda: catalog.slide_tiles(sid).jpeg(level, col, row))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    def overlay_tile(request: Request) -> Response:
        p = request.path_params
        key = f"{p['model']}/{p['layer']}"
        sid, dz, level, col, row = _tile_args(catalog, p["files"], p["level"], p["tile"], "png")
        if not catalog.layer_available(key, sid):
            raise _not_found("no such overlay for this slide")
        t = _threshold_of(request)
        data = cache.get(("overlay", key, sid, level, col, row, t),
                         lambda: catalog.overlay_png(key, sid, dz, level, col, row, t))
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return PlainTextResponse(f"{exc.detail}\n", status_code=exc.status_code)

    routes = [
        Route(f"/{token}", root, methods=["GET", "HEAD"]),
        Mount(f"/{token}", routes=[
            Route("/", _safe(index), methods=["GET", "HEAD"]),
            Route("/index.html", _safe(index), methods=["GET", "HEAD"]),
            Route("/static/{name}", _safe(static), methods=["GET", "HEAD"]),
            Mount("/vendor/openseadragon", app=StaticFiles(directory=str(assets)), name="vendor"),
            Route("/api/workspace.json", _safe(workspace), methods=["GET", "HEAD"]),
            Route("/api/tiles/{name}", _safe(tiles), methods=["GET", "HEAD"]),
            Route("/dzi/{name}", _safe(dzi), methods=["GET", "HEAD"]),
            Route("/dzi/{files}/{level}/{tile}", _safe(slide_tile), methods=["GET", "HEAD"]),
            Route("/overlay/{model}/{layer}/{files}/{level}/{tile}", _safe(overlay_tile), methods=["GET", "HEAD"]),
        ]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenGate, token=token)],
                     exception_handlers={HTTPException: http_error})
