"""Tile grids at a target resolution: ``histokd tile`` / ``histokd.tile(...)`` (contract 4).

Geometry (whatever the slide's native resolution):

* tile side in level-0 px ``ps0 = size * target_mpp / level0_mpp`` (e.g. 224 px at 0.5 µm/px is 448 level-0
  px on a 0.25 µm/px slide and 224 on a 0.5 µm/px one: the same 112 µm);
* stride ``(size - overlap) * target_mpp / level0_mpp``; tile ``(i, j)`` has its top-left at
  ``round(i * stride), round(j * stride)``, so the grid starts at the slide's origin and is the same
  physical grid on every slide; only tiles that lie wholly inside the slide are candidates;
* a tile is kept when its tissue fraction (exact area coverage of the tissue mask,
  :func:`histokd.slides.masks.tile_fractions`) is ``>= min_tissue`` and > 0.

Each slide gives ``RUN/tiles/<slide>.h5`` (``coords``, ``tissue``, ``tissue_mask`` + attrs) and a QC PNG;
both are written atomically. Slides run in spawn-safe worker processes; a slide whose h5 exists with the
same configuration is skipped (resume), unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from histokd.errors import HistokdError, InputError, SlideError
from histokd.slides.masks import tile_fractions
from histokd.slides.reader import open_slide
from histokd.slides.tissue import TissueMask, TissueParams, detect_tissue
from histokd.workspace import Workspace, atomic_path, clean_stale_temps

if TYPE_CHECKING:
    from histokd.data.cohort import LabelMap

log = logging.getLogger("histokd")

# attrs that must match for an existing tiles file to be reused
_RESUME_KEYS = ("patch_size", "target_mpp", "overlap", "min_tissue", "slide_path", "tissue_source", "tissue_params")
_MASK_SUFFIXES = (".png", ".geojson", ".json", ".xml")
QC_MAX_SIDE = 1600


@dataclass
class TileGrid:
    """A slide's tile grid: ``coords`` [N, 2] int64 level-0 top-left (x, y), ``tissue`` [N] float32, attrs."""

    coords: np.ndarray
    tissue: np.ndarray
    attrs: dict[str, Any]
    tissue_mask: np.ndarray | None = None  # bool [h, w], downsample in attrs["tissue_mask_downsample"]

    def __len__(self) -> int:
        return int(len(self.coords))


@dataclass
class TilingResult:
    """What ``tile`` did: tiles per slide tiled now, slides skipped (up to date), failures (id -> message)."""

    workspace: Path
    tiled: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_tiles(self) -> int:
        return sum(self.tiled.values()) + sum(self.skipped.values())

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def total(self) -> int:
        return len(self.tiled) + len(self.skipped) + len(self.failures)


@dataclass(frozen=True)
class TilingConfig:
    target_mpp: float = 0.5
    patch_size: int = 224
    overlap: int = 0
    min_tissue: float = 0.5
    slide_mpp: float | None = None
    backend: str = "auto"
    tissue: TissueParams = TissueParams()

    def validate(self) -> None:
        if not self.target_mpp > 0:
            raise InputError(f"--mpp must be > 0 (got {self.target_mpp})")
        if self.patch_size < 8:
            raise InputError(f"--size must be >= 8 px (got {self.patch_size})")
        if not 0 <= self.overlap < self.patch_size:
            raise InputError(f"--overlap must be in [0, size) px (got {self.overlap} for size {self.patch_size})")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise InputError(f"--min-tissue must be in [0, 1] (got {self.min_tissue})")
        if self.slide_mpp is not None and not self.slide_mpp > 0:
            raise InputError(f"--slide-mpp must be > 0 (got {self.slide_mpp})")


# --------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------
def grid_coords(dimensions: tuple[int, int], level0_mpp: float, target_mpp: float, size: int,
                overlap: int = 0) -> tuple[np.ndarray, float]:
    """All candidate tiles wholly inside the slide: (coords [N, 2] int64 level-0 top-left, ps0 float).

    Row-major order (y, then x).
    """
    W, H = dimensions
    scale = target_mpp / level0_mpp  # level-0 px per target px
    ps0 = size * scale
    stride = (size - overlap) * scale
    nx = int(np.floor((W - ps0) / stride + 1e-9)) + 1 if W >= ps0 else 0
    ny = int(np.floor((H - ps0) / stride + 1e-9)) + 1 if H >= ps0 else 0
    xs = np.round(np.arange(nx) * stride).astype(np.int64)
    ys = np.round(np.arange(ny) * stride).astype(np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1), ps0


def tissue_tiles(tissue: TissueMask, dimensions: tuple[int, int], level0_mpp: float, target_mpp: float,
                 size: int, overlap: int, min_tissue: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Tiles whose tissue fraction is >= ``min_tissue`` (and > 0): (coords [N, 2], fractions [N], ps0)."""
    coords, ps0 = grid_coords(dimensions, level0_mpp, target_mpp, size, overlap)
    frac = tile_fractions(tissue.mask, tissue.downsample, coords, ps0)
    keep = (frac >= min_tissue) & (frac > 0)
    return coords[keep], frac[keep], ps0


# --------------------------------------------------------------------------------------------------
# one slide
# --------------------------------------------------------------------------------------------------
def _attrs_for(cfg: TilingConfig, slide_id: str, slide_path: str, tissue_source: str) -> dict[str, Any]:
    import histokd

    return {
        "patch_size": int(cfg.patch_size),
        "target_mpp": float(cfg.target_mpp),
        "overlap": int(cfg.overlap),
        "min_tissue": float(cfg.min_tissue),
        "slide_id": slide_id,
        "slide_path": str(slide_path),
        "tissue_source": tissue_source,
        "tissue_params": json.dumps(cfg.tissue.to_dict(), sort_keys=True),
        "histokd_version": histokd.__version__,
    }


def tile_slide(slide_id: str, slide_path: str | os.PathLike[str], out_h5: str | os.PathLike[str],
               out_png: str | os.PathLike[str] | None, cfg: TilingConfig,
               tissue_mask_path: str | os.PathLike[str] | None = None) -> int:
    """Tile one slide into ``out_h5`` (+ QC ``out_png``); returns the number of tiles.

    Raises :class:`SlideError` for an unreadable slide or one with no tissue tile (the QC PNG is still
    written then, to show why).
    """
    with open_slide(slide_path, mpp=cfg.slide_mpp, backend=cfg.backend) as slide:
        tissue = detect_tissue(slide, cfg.tissue, tissue_mask=tissue_mask_path)
        coords, frac, ps0 = tissue_tiles(tissue, slide.dimensions, slide.mpp, cfg.target_mpp, cfg.patch_size,
                                         cfg.overlap, cfg.min_tissue)
        if out_png is not None:
            write_qc_png(out_png, tissue, coords, ps0)
        if len(coords) == 0:
            what = "no tissue found" if not tissue.mask.any() else (
                f"no tile with >= {cfg.min_tissue:.0%} tissue (tissue covers {tissue.fraction:.1%} of the slide)")
            raise SlideError(
                f"{slide_path}: {what} at {cfg.target_mpp} µm/px, {cfg.patch_size} px tiles; check the QC image "
                f"{out_png}, lower --min-tissue, or give a tissue mask (tissue_mask_path column / --tissue-mask-dir)"
            )
        attrs = _attrs_for(cfg, slide_id, str(slide_path), tissue.source)
        attrs.update({
            "patch_size_level0": int(round(ps0)),
            "patch_size_level0_exact": float(ps0),
            "level0_mpp": float(slide.mpp),
            "slide_dimensions": np.asarray(slide.dimensions, np.int64),
            "backend": slide.backend,
            "tissue_mask_downsample": float(tissue.downsample),
        })
        with atomic_path(out_h5) as tmp:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("coords", data=coords.astype(np.int64))
                f.create_dataset("tissue", data=frac.astype(np.float32))
                f.create_dataset("tissue_mask", data=tissue.mask.astype(np.uint8), compression="gzip",
                                 compression_opts=4)
                for k, v in attrs.items():
                    f.attrs[k] = v
    return int(len(coords))


def write_qc_png(path: str | os.PathLike[str], tissue: TissueMask, coords: np.ndarray, ps0: float) -> Path:
    """Thumbnail with the tissue contour (green), pen marks (red tint) and the kept tiles (blue boxes)."""
    from PIL import Image, ImageDraw
    from scipy import ndimage as ndi

    thumb = tissue.thumbnail
    h, w = thumb.shape[:2]
    mask = tissue.mask
    if mask.shape != (h, w):  # a user mask at another downsample: nearest-neighbour onto the thumbnail
        iy = np.minimum((np.arange(h) * mask.shape[0] / h).astype(int), mask.shape[0] - 1)
        ix = np.minimum((np.arange(w) * mask.shape[1] / w).astype(int), mask.shape[1] - 1)
        mask = mask[iy][:, ix]
    img = thumb.astype(np.float32)
    if tissue.pen is not None and tissue.pen.shape == (h, w) and tissue.pen.any():
        img[tissue.pen] = img[tissue.pen] * 0.5 + np.array([255, 0, 0], np.float32) * 0.5
    edge = mask & ~ndi.binary_erosion(mask, iterations=1, border_value=0)
    edge = ndi.binary_dilation(edge, iterations=max(1, round(max(h, w) / 800)))
    img[edge] = (0, 200, 0)
    pil = Image.fromarray(img.astype(np.uint8), "RGB")
    f = QC_MAX_SIDE / max(h, w)
    if f < 1:
        pil = pil.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX)
    else:
        f = 1.0
    draw = ImageDraw.Draw(pil)
    k = f / tissue.downsample  # level-0 px -> QC px
    for x, y in coords:
        draw.rectangle([x * k, y * k, (x + ps0) * k - 1, (y + ps0) * k - 1], outline=(30, 60, 255))
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG", compress_level=3)
    return Path(path)


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_tiles(path: str | os.PathLike[str], with_mask: bool = False) -> TileGrid:
    """Read ``RUN/tiles/<slide>.h5``: coords [N, 2] int64, tissue [N] float32, attrs (and the tissue mask)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: tiles file not found; run `histokd tile COHORT.csv -w RUN` first")
    try:
        with h5py.File(path, "r") as f:
            coords = np.asarray(f["coords"][()], dtype=np.int64).reshape(-1, 2)
            tissue = np.asarray(f["tissue"][()], dtype=np.float32) if "tissue" in f else np.ones(len(coords), np.float32)
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            mask = np.asarray(f["tissue_mask"][()], bool) if with_mask and "tissue_mask" in f else None
    except Exception as e:  # noqa: BLE001 - truncated / not HDF5 / missing dataset
        raise InputError(f"{path}: cannot read tiles file ({type(e).__name__}: {e}); delete it and re-run "
                         f"`histokd tile`") from e
    return TileGrid(coords=coords, tissue=tissue, attrs=attrs, tissue_mask=mask)


def _up_to_date(path: Path, expected: dict[str, Any]) -> int | None:
    """Number of tiles if ``path`` holds a readable grid made with ``expected`` attrs, else None."""
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            n = int(f["coords"].shape[0])
    except Exception:  # noqa: BLE001 - unreadable: redo it
        return None
    for k in _RESUME_KEYS:
        a, b = attrs.get(k), expected.get(k)
        if isinstance(b, float):
            if not isinstance(a, (int, float)) or abs(a - b) > 1e-9:
                return None
        elif a != b:
            return None
    return n


# --------------------------------------------------------------------------------------------------
# a cohort
# --------------------------------------------------------------------------------------------------
@dataclass
class _Job:
    slide_id: str
    slide_path: str
    out_h5: str
    out_png: str
    tissue_mask_path: str | None
    cfg: dict


def _run_job(job: _Job) -> tuple[str, int | None, str | None]:
    """Worker entry point (top level, so spawn can pickle it): (slide_id, n_tiles or None, error)."""
    cfg_d = dict(job.cfg)
    cfg_d["tissue"] = TissueParams(**cfg_d["tissue"])
    cfg = TilingConfig(**cfg_d)
    try:
        n = tile_slide(job.slide_id, job.slide_path, job.out_h5, job.out_png, cfg, job.tissue_mask_path)
        return job.slide_id, n, None
    except HistokdError as e:
        return job.slide_id, None, str(e)
    except Exception as e:  # noqa: BLE001 - one bad slide must not stop the cohort
        log.debug("unexpected error on %s", job.slide_id, exc_info=True)
        return job.slide_id, None, f"{job.slide_path}: unexpected {type(e).__name__}: {e}; report this with the file"


def _find_user_mask(row: dict, mask_dir: Path | None, slide_id: str) -> str | None:
    col = row.get("tissue_mask_path")
    if col:
        return str(col)
    if mask_dir is not None:
        for suf in _MASK_SUFFIXES:
            p = mask_dir / f"{slide_id}{suf}"
            if p.exists():
                return str(p)
    return None


def tile(
    cohort: Any,
    workspace: Any,
    mpp: float = 0.5,
    size: int = 224,
    overlap: int = 0,
    min_tissue: float = 0.5,
    workers: int = 2,
    overwrite: bool = False,
    slide_mpp: float | None = None,
    tissue_mask_dir: str | os.PathLike[str] | None = None,
    backend: str = "auto",
    tissue_params: TissueParams | None = None,
    show_progress: bool | None = None,
    label_map: LabelMap = None,
) -> TilingResult:
    """Tile every slide of ``cohort`` into ``workspace/tiles/`` (see the module docstring).

    Args:
        cohort: a cohort CSV path or a :class:`~histokd.data.cohort.Cohort`.
        workspace: a run folder path or a :class:`~histokd.workspace.Workspace`.
        mpp: target resolution of the tiles, µm/px.
        size: tile side in px at ``mpp``.
        overlap: overlap between neighbouring tiles in px at ``mpp``.
        min_tissue: minimum tissue fraction of a kept tile, in [0, 1].
        workers: slides processed in parallel (spawned processes); 1 = in this process.
        overwrite: re-tile slides whose tiles file is already up to date.
        slide_mpp: level-0 µm/px for slides that have no resolution metadata.
        tissue_mask_dir: folder of user tissue masks ``<slide_id>.png|.geojson|.json|.xml`` (a
            ``tissue_mask_path`` cohort column takes precedence).
        backend: slide reader, "auto" | "openslide" | "tiffslide".
        label_map: labels renamed as the cohort is read, ``"tumor=tumour,Tumour=tumour"`` (or a list of
            such strings, or a dict); the workspace's ``cohort.csv`` keeps the renamed labels. Labels that
            are one class spelt differently (case, spaces, tumour/tumor) are refused without it.

    Returns a :class:`TilingResult`; per-slide failures are in ``result.failures`` (no exception), the
    cohort-level ones (bad CSV, bad options) raise :class:`InputError` before any work.
    """
    from histokd.data.cohort import Cohort, read_cohort
    from histokd.progress import progress

    t0 = time.perf_counter()
    cfg = TilingConfig(target_mpp=float(mpp), patch_size=int(size), overlap=int(overlap), min_tissue=float(min_tissue),
                       slide_mpp=slide_mpp, backend=backend, tissue=tissue_params or TissueParams())
    cfg.validate()
    if isinstance(cohort, Cohort):
        co = cohort.with_label_map(label_map)
    else:
        co = read_cohort(cohort, drop_invalid=True, label_map=label_map)
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    mask_dir = Path(tissue_mask_dir) if tissue_mask_dir is not None else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise InputError(f"{mask_dir}: tissue mask folder not found; give a folder of <slide_id>.png/.geojson masks")

    ws.tiles_dir.mkdir(parents=True, exist_ok=True)
    n_stale = clean_stale_temps(ws.tiles_dir) + clean_stale_temps(ws.root)
    if n_stale:
        log.info("removed %d temporary file(s) left by an interrupted run", n_stale)
    co.write(ws.cohort_csv)

    result = TilingResult(workspace=ws.root)
    result.failures.update(co.invalid)
    jobs: list[_Job] = []
    cfg_d = asdict(cfg)
    for row in co.rows():
        sid = str(row["slide_id"])
        user_mask = _find_user_mask(row, mask_dir, sid)
        h5 = ws.tiles_h5(sid)
        expected = _attrs_for(cfg, sid, str(row["path"]), user_mask if user_mask else "auto")
        if not overwrite:
            n = _up_to_date(h5, expected)
            if n is not None:
                result.skipped[sid] = n
                continue
        jobs.append(_Job(sid, str(row["path"]), str(h5), str(ws.tiles_png(sid)), user_mask, cfg_d))
    if result.skipped:
        log.info("%d slide(s) already tiled with this configuration (use --overwrite to redo)", len(result.skipped))

    def record(sid: str, n: int | None, err: str | None) -> None:
        if err is None and n is not None:
            result.tiled[sid] = n
        else:
            result.failures[sid] = err or "failed"
            log.error("%s: %s", sid, err)

    with progress(disable=None if show_progress is None else not show_progress) as bar:
        task = bar.add_task("tiling", total=len(jobs), unit="slide")
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                record(*_run_job(job))
                bar.advance(task)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
                futures: dict[Future, _Job] = {pool.submit(_run_job, j): j for j in jobs}
                for fut in as_completed(futures):
                    job = futures[fut]
                    try:
                        record(*fut.result())
                    except Exception as e:  # noqa: BLE001 - a crashed worker (e.g. a decoder segfault)
                        record(job.slide_id, None, f"{job.slide_path}: worker process died ({type(e).__name__}); "
                                                   f"the file may be corrupt: re-run with --workers 1 to see")
                    bar.advance(task)
    result.seconds = time.perf_counter() - t0
    return result
