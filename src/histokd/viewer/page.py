"""The viewer's page: ``static/index.html``, ``static/viewer.js``, ``static/viewer.css`` (this package's own
files), served by the app and copied by the static export. The page reads everything else from
``api/workspace.json`` (``static: true`` in an export: no live threshold) and builds its DOM with
``textContent`` only, so slide ids, labels and class names are shown as text whatever they hold."""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: name under ``static/`` -> (file, media type)
STATIC_FILES: dict[str, tuple[Path, str]] = {
    "viewer.js": (STATIC_DIR / "viewer.js", "text/javascript; charset=utf-8"),
    "viewer.css": (STATIC_DIR / "viewer.css", "text/css; charset=utf-8"),
}


def render_index(static: bool = False) -> str:
    """``index.html`` (the same page for the server and the export; ``static`` is read from the workspace JSON)."""
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")
