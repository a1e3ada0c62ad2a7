"""What a workspace holds for the viewer: its slides (``RUN/cohort.csv``), the models with predictions
(``RUN/predictions/<id>/``, contract 7) and, per slide, the overlay layers that can be drawn.

Only slides of the workspace cohort are known; a request names a slide by id and the id is looked up here,
never joined into a path. Everything heavy (slide handles, prediction files, rasters, masks) is loaded on
first use and kept in small LRU caches.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from histokd.errors import HistokdError, InputError
from histokd.predictions import SlidePrediction, read_prediction
from histokd.viewer.deepzoom import DeepZoom, SlideTiles
from histokd.viewer.layers import Colours, MaskRaster, TileRaster, colour_map, colourise, render_png
from histokd.workspace import Workspace, read_csv

log = logging.getLogger("histokd")
T = TypeVar("T")

TRUTH_RGB = (0, 220, 255)
TISSUE_RGB = (40, 170, 60)
GRID_RGB = (40, 90, 255)
PIXEL_RGB = (230, 0, 200)
ANNOTATION_RGB = (255, 200, 0)
#: annotation files ``--annotations DIR`` may hold per slide, in the order they are looked for
ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")


class LRU:
    """A small thread-safe least-recently-used cache; ``get(key, make)`` computes a missing value once (concurrent
    callers of the same key wait for it); an evicted value with a ``close`` method is closed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._making: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                if key in self._d:
                    return self._d[key]
            try:
                value = make()
            finally:
                with self._lock:
                    self._making.pop(key, None)
            evicted = []
            with self._lock:
                self._d[key] = value
                while len(self._d) > self.size:
                    evicted.append(self._d.popitem(last=False)[1])
        for old in evicted:
            close = getattr(old, "close", None)
            if callable(close):
                close()
        return value


@dataclass
class Layer:
    """One overlay: ``key`` ``<model>/<name>`` (``_/<name>`` for the workspace's own layers)."""

    key: str
    model: str
    name: str  # p<i>, evidence, pixel, truth, tissue, grid
    title: str
    colours: Colours
    legend: tuple[str, str]  # what the two ends of the colour bar mean
    threshold: float = 0.0  # default of the page's slider

    def describe(self) -> dict:
        return {"key": self.key, "model": self.model, "name": self.name, "title": self.title,
                "legend": self.colours.legend(), "legend_ends": list(self.legend), "threshold": self.threshold,
                "graded": self.colours.lut is not None}


@dataclass
class ModelInfo:
    id: str
    method: str
    classes: list[str]
    positive: int
    threshold: float
    bags: dict[str, dict[str, str]] = field(default_factory=dict)  # slide -> row of bags.csv
    slides: list[str] = field(default_factory=list)  # slides with a prediction file
    has_evidence: bool = False
    has_pixel: bool = False

    def layers(self) -> list[Layer]:
        prob = colour_map("inferno")
        out = []
        order = [self.positive] + [i for i in range(len(self.classes)) if i != self.positive]
        for i in order if len(self.classes) > 2 else [self.positive]:
            out.append(Layer(f"{self.id}/p{i}", self.id, f"p{i}", f"{self.id}: P({self.classes[i]})", prob,
                             ("0", "1"), self.threshold if i == self.positive else 0.5))
        if self.has_evidence:
            out.append(Layer(f"{self.id}/evidence", self.id, "evidence", f"{self.id}: raw evidence (attention / "
                             f"teacher score)", colour_map("viridis"), ("slide min", "slide max"), 0.0))
        if self.has_pixel:
            out.append(Layer(f"{self.id}/pixel", self.id, "pixel", f"{self.id}: pixel mask", Colours(rgb=PIXEL_RGB),
                             ("", "mask"), 0.0))
        return out


@dataclass
class SlideEntry:
    id: str
    path: str
    label: str | None
    split: str | None
    level0_mpp: float | None
    mask_path: str | None
    tiles_h5: Path | None
    annotation_path: Path | None = None


WORKSPACE_LAYERS = [
    Layer("_/truth", "_", "truth", "ground truth (cohort mask_path)", Colours(rgb=TRUTH_RGB), ("", "tumour")),
    Layer("_/truth-contour", "_", "truth-contour", "ground-truth contour", Colours(rgb=TRUTH_RGB), ("", "contour")),
    Layer("_/annotations", "_", "annotations", "annotations (--annotations)", Colours(rgb=ANNOTATION_RGB),
          ("", "contour")),
    Layer("_/tissue", "_", "tissue", "tissue mask (histokd tile)", Colours(rgb=TISSUE_RGB), ("", "tissue")),
    Layer("_/grid", "_", "grid", "tile grid (histokd tile)", Colours(rgb=GRID_RGB), ("", "tile edges")),
]


def _text(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    s = str(v)
    return s if s else None


class Catalog:
    """The slides and models of one workspace, and the tiles the viewer serves from them."""

    def __init__(self, workspace: str | os.PathLike[str] | Workspace, models: list[str] | None = None,
                 annotations: str | os.PathLike[str] | None = None) -> None:
        """``annotations``: a folder of ``<slide>.geojson`` (QuPath) or ``<slide>.xml`` (ASAP) files, drawn as
        contours (the ``_/annotations`` layer)."""
        from histokd.data.cohort import load_workspace_cohort

        self.ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        if not self.ws.root.is_dir():
            raise InputError(f"{self.ws.root}: no such run folder; check -w")
        if annotations is not None and not Path(annotations).is_dir():
            raise InputError(f"{annotations}: no such folder; --annotations takes a folder of <slide>.geojson "
                             f"(or .xml) files")
        cohort = load_workspace_cohort(self.ws).df
        self.slides: dict[str, SlideEntry] = {}
        for _, row in cohort.iterrows():
            sid = str(row["slide_id"])
            h5 = self.ws.tiles_h5(sid)
            self.slides[sid] = SlideEntry(
                id=sid, path=str(row["path"]), label=_text(row.get("label")), split=_text(row.get("split")),
                level0_mpp=row.get("level0_mpp") if isinstance(row.get("level0_mpp"), float) else None,
                mask_path=_text(row.get("mask_path")), tiles_h5=h5 if h5.is_file() else None,
                annotation_path=_annotation_file(annotations, sid))
        self.models: dict[str, ModelInfo] = {}
        for mid in models if models else self._model_ids():
            self.models[mid] = self._model(mid)
        self.layers: dict[str, Layer] = {ly.key: ly for ly in WORKSPACE_LAYERS}
        for m in self.models.values():
            self.layers.update({ly.key: ly for ly in m.layers()})
        self._slides = LRU(8)
        self._preds = LRU(64)
        self._rasters = LRU(64)
        self._dims: dict[str, tuple[int, int]] = {}
        self._summary: dict[tuple[str, str], dict] = {}
        self._tissue: dict[str, bool] = {}

    # -- models ---------------------------------------------------------------------------------------
    def _model_ids(self) -> list[str]:
        root = self.ws.root / "predictions"
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.h5")))

    def _model(self, mid: str) -> ModelInfo:
        pdir = self.ws.predictions_dir(mid)  # check_id: a hostile id never becomes a path
        files = sorted(pdir.glob("*.h5")) if pdir.is_dir() else []
        if not files:
            raise InputError(f"{pdir}: no predictions of model {mid!r}; run `histokd label -w {self.ws.root} "
                             f"--model {mid}` first, or leave out --model to show every labelled model")
        first, problems = None, []
        for f in files:  # the first readable file describes the model; a damaged one fails only its slide
            try:
                first = read_prediction(f)
                break
            except HistokdError as e:
                problems.append(str(e))
        if first is None:
            raise InputError(f"{pdir}: no readable prediction file of model {mid!r} ({problems[0]}); run `histokd label "
                             f"-w {self.ws.root} --model {mid} --overwrite`")
        metrics = _read_json(self.ws.predictions_metrics(mid))
        thr = metrics.get("threshold", _read_json(self.ws.model_files(mid).metrics).get("threshold", 0.5))
        bags: dict[str, dict[str, str]] = {}
        if self.ws.predictions_bags_csv(mid).is_file():
            try:
                df = read_csv(self.ws.predictions_bags_csv(mid))
                bags = {str(r["slide_id"]): dict(r) for _, r in df.iterrows()}
            except Exception as e:  # noqa: BLE001 - bags.csv is optional here: the h5 attrs hold the same
                log.warning("%s: unreadable (%s); bag probabilities are read from the prediction files",
                            self.ws.predictions_bags_csv(mid), e)
        has_evidence, has_pixel = first.scores is not None, first.mask is not None
        return ModelInfo(id=mid, method=str(first.attrs.get("method", metrics.get("method", ""))),
                         classes=first.classes, positive=first.positive,
                         threshold=float(thr) if isinstance(thr, (int, float)) else 0.5, bags=bags,
                         slides=[p.stem for p in files], has_evidence=has_evidence, has_pixel=has_pixel)

    def prediction(self, mid: str, sid: str) -> SlidePrediction | None:
        m = self.models.get(mid)
        if m is None or sid not in m.slides or sid not in self.slides:
            return None
        return self._preds.get((mid, sid), lambda: read_prediction(self.ws.predictions_h5(mid, sid)))

    # -- slides ---------------------------------------------------------------------------------------
    def slide_tiles(self, sid: str) -> SlideTiles:
        """The open slide of ``sid`` (a workspace slide); :class:`SlideError` when it cannot be read."""
        from histokd.slides.reader import open_slide

        e = self.slides[sid]
        return self._slides.get(sid, lambda: SlideTiles(lambda: open_slide(e.path, mpp=e.level0_mpp)))

    def dimensions(self, sid: str) -> tuple[int, int]:
        if sid not in self._dims:
            e = self.slides[sid]
            dims = None
            if e.tiles_h5 is not None:
                import h5py

                try:
                    with h5py.File(e.tiles_h5, "r") as f:
                        d = f.attrs.get("slide_dimensions")
                        dims = (int(d[0]), int(d[1])) if d is not None else None
                except OSError:
                    dims = None
            self._dims[sid] = dims or tuple(self.slide_tiles(sid).slide.dimensions)
        return self._dims[sid]

    def deepzoom(self, sid: str, top: int | None = None) -> DeepZoom:
        w, h = self.dimensions(sid)
        return DeepZoom(w, h, top=top)

    def layer_available(self, key: str, sid: str) -> bool:
        ly = self.layers.get(key)
        if ly is None or sid not in self.slides:
            return False
        if ly.model != "_":
            return sid in self.models[ly.model].slides
        e = self.slides[sid]
        if ly.name in ("truth", "truth-contour"):
            return e.mask_path is not None
        if ly.name == "annotations":
            return e.annotation_path is not None
        if ly.name == "tissue":
            return self._has_tissue_mask(e)
        return e.tiles_h5 is not None

    def _has_tissue_mask(self, e: SlideEntry) -> bool:
        if e.id not in self._tissue:
            import h5py

            try:
                with h5py.File(e.tiles_h5, "r") as f:
                    self._tissue[e.id] = "tissue_mask" in f
            except (OSError, TypeError):  # no tiles file, or not HDF5
                self._tissue[e.id] = False
        return self._tissue[e.id]

    # -- rasters -----------------------------------------------------------------------------------------
    def raster(self, key: str, sid: str) -> TileRaster | MaskRaster:
        """The raster of layer ``key`` on slide ``sid`` (the caller checked :meth:`layer_available`)."""
        return self._rasters.get((key, sid), lambda: self._make_raster(self.layers[key], sid))

    def _make_raster(self, ly: Layer, sid: str) -> TileRaster | MaskRaster:
        from histokd.slides.tiling import read_tiles

        e = self.slides[sid]
        if ly.name in ("truth", "truth-contour", "annotations"):
            from histokd.slides.masks import load_mask

            if ly.name == "truth-contour":  # the same mask as the filled layer
                return self.raster("_/truth", sid)
            mask, ds = load_mask(e.mask_path if ly.name == "truth" else e.annotation_path, self.dimensions(sid))
            return MaskRaster(mask, ds)
        if ly.name in ("tissue", "grid"):
            grid = read_tiles(e.tiles_h5, with_mask=ly.name == "tissue")
            if ly.name == "tissue":
                if grid.tissue_mask is None:
                    raise InputError(f"{e.tiles_h5}: no tissue_mask dataset; re-run `histokd tile --overwrite`")
                return MaskRaster(grid.tissue_mask, float(grid.attrs.get("tissue_mask_downsample", 1.0)))
            size = float(grid.attrs.get("patch_size_level0_exact", grid.attrs.get("patch_size_level0", 0)) or 0)
            return TileRaster(grid.coords, size, np.ones(len(grid.coords), np.float32))
        pred = self.prediction(ly.model, sid)
        assert pred is not None
        size = pred.patch_size_level0 or self._grid_size(e)
        if ly.name == "pixel":
            return MaskRaster(pred.mask, pred.mask_downsample or 1.0, scale=max(1.0, float(pred.mask.max() or 1)))
        if ly.name == "evidence":
            return TileRaster(pred.coords, size, _minmax(pred.scores))
        return TileRaster(pred.coords, size, pred.probs[:, int(ly.name[1:])])

    def _grid_size(self, e: SlideEntry) -> float:
        from histokd.slides.tiling import read_tiles

        if e.tiles_h5 is None:
            raise InputError(f"{e.id}: prediction has no patch_size_level0 and there is no tiles file; "
                             f"run `histokd label` again")
        return float(read_tiles(e.tiles_h5).attrs.get("patch_size_level0", 0))

    def overlay_values(self, key: str, sid: str, dz: DeepZoom, level: int, col: int, row: int) -> np.ndarray:
        """[h, w] values (0..1, NaN where the layer has none) of one overlay tile (the caller checked the layer,
        slide and tile)."""
        ly = self.layers[key]
        xs, ys = dz.pixel_centres(level, col, row)
        r = self.raster(key, sid)
        contour = ly.name in ("grid", "truth-contour", "annotations")
        return r.outline(xs, ys) if contour else r.sample(xs, ys)

    def overlay_rgba(self, key: str, sid: str, dz: DeepZoom, level: int, col: int, row: int,
                     threshold: float | None = None) -> np.ndarray:
        """RGBA [h, w, 4] of one overlay tile."""
        values = self.overlay_values(key, sid, dz, level, col, row)
        return colourise(values, self.layers[key].colours, threshold=threshold or 0.0)

    def overlay_png(self, key: str, sid: str, dz: DeepZoom, level: int, col: int, row: int,
                    threshold: float | None = None) -> bytes:
        """One overlay tile as a palette PNG."""
        values = self.overlay_values(key, sid, dz, level, col, row)
        return render_png(values, self.layers[key].colours, threshold=threshold or 0.0)

    # -- what the page reads --------------------------------------------------------------------------
    def _model_summary(self, m: ModelInfo, e: SlideEntry) -> dict | None:
        """Bag probability, predicted class, error (1 - bag probability of the slide's label) and
        teacher-student disagreement (mean |student P(positive) - min-max normalised teacher evidence| over
        the slide's tiles) of model ``m`` on slide ``e``."""
        key = (m.id, e.id)
        if key in self._summary:
            return self._summary[key]
        if e.id not in m.slides:
            return None
        row = m.bags.get(e.id)
        bag = None
        if row is not None:
            try:
                bag = [float(row[f"prob_{c}"]) for c in m.classes]
            except (KeyError, ValueError):
                bag = None
        disagreement = None
        try:
            pred = self.prediction(m.id, e.id)
        except HistokdError as err:
            return {"error_text": str(err)}
        if pred is not None:
            bag = bag or [float(v) for v in pred.bag_probs]
            if pred.scores is not None and len(pred.scores):
                disagreement = float(np.mean(np.abs(_minmax(pred.scores) - pred.probs[:, m.positive])))
        out: dict[str, Any] = {"bag": bag, "p": bag[m.positive] if bag else None,
                               "pred": m.classes[int(np.argmax(bag))] if bag else None,
                               "error": (1.0 - bag[m.classes.index(e.label)]) if bag and e.label in m.classes else None,
                               "disagreement": disagreement}
        self._summary[key] = out
        return out

    def workspace_json(self, static: bool = False, top: int | None = None) -> dict:
        """Everything the page needs up front: models, layers, and the slide list with each model's scores."""
        import histokd

        slides = []
        for e in self.slides.values():
            entry: dict[str, Any] = {"id": e.id, "label": e.label, "split": e.split, "models": {}}
            try:
                entry["dz"] = self.deepzoom(e.id, top).describe()
            except HistokdError as err:
                entry["unavailable"] = str(err)
            entry["layers"] = [k for k in self.layers if self.layer_available(k, e.id)]
            for m in self.models.values():
                s = self._model_summary(m, e)
                if s is not None:
                    entry["models"][m.id] = s
            slides.append(entry)
        return {
            "histokd_version": histokd.__version__, "workspace": self.ws.root.name, "static": static,
            "models": [{"id": m.id, "method": m.method, "classes": m.classes, "positive": m.positive,
                        "threshold": m.threshold, "layers": [ly.key for ly in m.layers()]}
                       for m in self.models.values()],
            "layers": [ly.describe() for ly in self.layers.values()],
            "slides": slides,
        }

    def tiles_json(self, sid: str) -> dict:
        """Every tile of a slide with every model's scores, for clicks and hot spots (found in the page):
        ``models[id]`` = ``x``, ``y`` [N] level-0 top-left, ``size`` level-0 px, ``probs`` [C][N], ``evidence``
        [N] (raw, when the model has it); ``truth`` = the tiles of the first model (or the grid) with their
        ground-truth tumour fraction."""
        from histokd.slides.masks import tile_fractions

        e = self.slides[sid]
        out: dict[str, Any] = {"slide_id": sid, "models": {}}
        first = None
        for m in self.models.values():
            pred = self.prediction(m.id, sid)
            if pred is None:
                continue
            size = float(pred.patch_size_level0 or self._grid_size(e))
            d: dict[str, Any] = {"x": pred.coords[:, 0].tolist(), "y": pred.coords[:, 1].tolist(), "size": size,
                                 "probs": [_rounded(pred.probs[:, i]) for i in range(pred.probs.shape[1])]}
            if pred.scores is not None:
                d["evidence"] = _rounded(pred.scores)
            out["models"][m.id] = d
            first = first or (pred.coords, size)
        if first is None and e.tiles_h5 is not None:
            from histokd.slides.tiling import read_tiles

            g = read_tiles(e.tiles_h5)
            first = (g.coords, float(g.attrs.get("patch_size_level0", 0)))
        if first is not None and e.mask_path is not None and first[1] > 0:
            raster = self.raster("_/truth", sid)
            assert isinstance(raster, MaskRaster)
            frac = tile_fractions(raster.mask, raster.downsample, first[0], first[1])
            out["truth"] = {"x": first[0][:, 0].tolist(), "y": first[0][:, 1].tolist(), "size": first[1],
                            "fraction": _rounded(frac)}
        return out


def _annotation_file(folder: str | os.PathLike[str] | None, sid: str) -> Path | None:
    if folder is None:
        return None
    for suffix in ANNOTATION_SUFFIXES:
        p = Path(folder) / f"{sid}{suffix}"
        if p.is_file():
            return p
    return None


def _minmax(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    if not len(v):
        return v
    lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
    return np.zeros_like(v) if hi <= lo else (v - lo) / (hi - lo)


def _rounded(v: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(x) else round(x, 4) for x in np.asarray(v, np.float64).tolist()]


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
