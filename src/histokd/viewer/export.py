"""Static export (``histokd view --export DIR``): the page, OpenSeadragon, the workspace JSON, every slide's
DZI pyramid and every overlay's tiles as plain files under ``DIR`` in the server's URL layout, so any static
web server (or a shared folder opened through one) shows the same viewer without histokd.

Overlays are exported at threshold 0 (every value shown; the page's threshold slider is disabled there).
``max_level`` caps the deepest deep-zoom level written; the pyramid then ends at ``2 ** (max - cap)`` level-0
px per pixel (recorded as ``dz.base_scale`` in ``api/workspace.json``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histokd.errors import HistokdError, InputError
from histokd.viewer.catalog import Catalog
from histokd.viewer.deepzoom import DeepZoom
from histokd.viewer.page import STATIC_FILES, render_index
from histokd.workspace import write_text

log = logging.getLogger("histokd")


@dataclass
class ExportPlan:
    """What an export will write: per slide its pyramid and overlay layers; byte estimate from sample tiles."""

    slides: dict[str, tuple[DeepZoom, list[str]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    slide_tiles: int = 0
    overlay_tiles: int = 0
    bytes_estimate: int = 0

    def describe(self) -> str:
        return (f"{len(self.slides)} slides, {self.slide_tiles} slide tiles + {self.overlay_tiles} overlay tiles, "
                f"about {self.bytes_estimate / 1e6:.1f} MB")


def plan_export(catalog: Catalog, max_level: int | None = None, sample: int = 6, assets: Path | None = None) -> ExportPlan:
    """Count the tiles of every slide and layer and estimate the size: tiles by rendering ``sample`` tiles of each
    kind (of the first slide, at its deepest exported level), plus the page and OpenSeadragon (``assets``)."""
    plan = ExportPlan()
    fixed = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file()) if assets is not None else 0
    fixed += sum(path.stat().st_size for path, _ in STATIC_FILES.values())
    for sid in catalog.slides:
        try:
            dz = catalog.deepzoom(sid, max_level)
        except HistokdError as e:
            plan.skipped[sid] = str(e)
            continue
        layers = [k for k in catalog.layers if catalog.layer_available(k, sid)]
        plan.slides[sid] = (dz, layers)
        plan.slide_tiles += dz.n_tiles()
        plan.overlay_tiles += dz.n_tiles() * len(layers)
    if not plan.slides:
        plan.bytes_estimate = fixed
        return plan
    sid, (dz, layers) = next(iter(plan.slides.items()))
    rng = np.random.default_rng(0)
    cols, rows = dz.tile_count(dz.top_level)
    picks = [(int(rng.integers(cols)), int(rng.integers(rows))) for _ in range(sample)]
    try:
        st = catalog.slide_tiles(sid)
        slide_b = np.mean([len(st.jpeg(dz.top_level, c, r)) for c, r in picks])
        over_b = np.mean([len(catalog.overlay_png(k, sid, dz, dz.top_level, c, r)) for c, r in picks for k in layers]) \
            if layers else 0.0
    except HistokdError:
        slide_b, over_b = 20_000.0, 2_000.0  # a typical JPEG tile of tissue, a typical overlay PNG
    plan.bytes_estimate = int(fixed + plan.slide_tiles * slide_b + plan.overlay_tiles * over_b)
    return plan


def write_export(catalog: Catalog, out: Path, assets: Path, plan: ExportPlan, max_level: int | None = None,
                 advance: Callable[[int], None] | None = None) -> dict[str, str]:
    """Write the export under ``out``; returns the slides that could not be exported (id -> one line).
    ``index.html`` is written last: a folder without it is an export that did not finish."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose another --export folder")
    out.mkdir(parents=True, exist_ok=True)
    with_index = out / "index.html"
    if with_index.exists():
        with_index.unlink()
    vendor = out / "vendor" / "openseadragon"
    if vendor.exists():
        shutil.rmtree(vendor)
    shutil.copytree(assets, vendor)
    for name, (path, _) in STATIC_FILES.items():
        (out / "static").mkdir(exist_ok=True)
        shutil.copyfile(path, out / "static" / name)
    failures = dict(plan.skipped)
    for sid, (dz, layers) in plan.slides.items():
        try:
            _export_slide(catalog, out, sid, dz, layers, advance)
        except HistokdError as e:
            log.warning("export: slide %s: %s", sid, e)
            failures[sid] = str(e)
    doc = catalog.workspace_json(static=True, top=max_level)
    for s in doc["slides"]:
        if s["id"] in failures:
            s.pop("dz", None)
            s["unavailable"] = failures[s["id"]]
    write_text(out / "api" / "workspace.json", json.dumps(doc))
    write_text(with_index, render_index(static=True))
    return failures


def _export_slide(catalog: Catalog, out: Path, sid: str, dz: DeepZoom, layers: list[str],
                  advance: Callable[[int], None] | None) -> None:
    st = catalog.slide_tiles(sid)
    st_dz = DeepZoom(dz.width, dz.height, top=dz.top)
    write_text(out / "dzi" / f"{sid}.dzi", st_dz.dzi_xml("jpeg"))
    for level in range(dz.top_level + 1):
        cols, rows = dz.tile_count(level)
        folder = out / "dzi" / f"{sid}_files" / str(level)
        folder.mkdir(parents=True, exist_ok=True)
        lfolders = {k: out / "overlay" / k.split("/")[0] / k.split("/")[1] / f"{sid}_files" / str(level) for k in layers}
        for f in lfolders.values():
            f.mkdir(parents=True, exist_ok=True)
        for row in range(rows):
            for col in range(cols):
                (folder / f"{col}_{row}.jpeg").write_bytes(st.jpeg(level, col, row))
                for k, f in lfolders.items():
                    (f / f"{col}_{row}.png").write_bytes(catalog.overlay_png(k, sid, dz, level, col, row, 0.0))
                if advance is not None:
                    advance(1 + len(layers))
    write_text(out / "api" / "tiles" / f"{sid}.json", json.dumps(catalog.tiles_json(sid)))
