"""``histokd tile`` / ``histokd.tile(...)``: a tile grid for every slide of a cohort -> ``RUN/tiles/``.

The geometry and one slide's grid are :mod:`histokd.slides.tiling`'s; this module reads the cohort,
writes the workspace's ``cohort.csv``, skips the slides whose grid is up to date (resume, unless
``overwrite``) and runs the others in spawn-safe worker processes, collecting per-slide failures.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histokd.errors import HistokdError, InputError
from histokd.progress import progress
from histokd.slides.tiling import TilingConfig, tile_slide, tiles_up_to_date, tiling_attrs
from histokd.slides.tissue import TissueParams
from histokd.workspace import Workspace, clean_stale_temps

if TYPE_CHECKING:
    from histokd.data.cohort import LabelMap

log = logging.getLogger("histokd")

_MASK_SUFFIXES = (".png", ".geojson", ".json", ".xml")


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
    cfg = TilingConfig(**job.cfg)
    try:
        n = tile_slide(job.slide_id, job.slide_path, job.out_h5, job.out_png, cfg, job.tissue_mask_path)
        return job.slide_id, n, None
    except HistokdError as e:
        return job.slide_id, None, str(e)
    except Exception as e:  # noqa: BLE001 - one bad slide must not stop the cohort
        log.debug("unexpected error on %s", job.slide_id, exc_info=True)
        return job.slide_id, None, f"{job.slide_path}: unexpected {type(e).__name__}: {e}; report this with the file"


def _merge_into_workspace(ws: Workspace, co: Any) -> Any:
    """The workspace's one cohort table after tiling ``co`` into it: the slides already there are kept,
    ``co``'s are added (a second cohort never shadows the first, so no earlier slide silently drops out of
    ``embed`` / ``train`` / ``label``). A slide id already there with another path or label is refused."""
    import pandas as pd

    from histokd.data.cohort import Cohort, check_label_spelling, read_cohort

    if not ws.cohort_csv.exists():
        return co
    old = read_cohort(ws.cohort_csv, require_label=False).df
    both = [s for s in co.df.index if s in old.index]
    clash = [s for s in both if any(str(old.at[s, c]) != str(co.df.at[s, c]) for c in ("path", "label"))]
    if clash:
        s = clash[0]
        raise InputError(
            f"{ws.cohort_csv}: slide {s!r} is already in this workspace with path {old.at[s, 'path']} and label "
            f"{old.at[s, 'label']!r}, the new cohort says {co.df.at[s, 'path']} / {co.df.at[s, 'label']!r}"
            f"{f' ({len(clash)} such slides)' if len(clash) > 1 else ''}; use another workspace, or delete "
            f"{ws.cohort_csv} to replace the workspace's cohort (its tiles are kept and reused)"
        )
    kept = old.loc[[s for s in old.index if s not in co.df.index]]
    if len(kept):
        log.info("%s: %d slide(s) of earlier cohorts kept beside the %d of this one", ws.cohort_csv, len(kept),
                 len(co.df))
    merged = Cohort(pd.concat([kept, co.df]), co.source, co.invalid)
    # one class spelt two ways across the two cohorts would make the workspace's table unreadable
    check_label_spelling(merged.df["label"], ws.cohort_csv)
    return merged


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when its parent is gone (a ``kill -9`` of ``histokd tile``
    would otherwise leave the workers tiling their current slide for minutes)."""
    import threading

    if sys.platform.startswith("linux"):
        # the kernel kills this worker the moment its parent dies (no half-second window in which a
        # resumed run could see the dead run's worker alive and keep its temp file)
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="histokd-parent-watch").start()


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


def _plan_jobs(ws: Workspace, co: Any, cfg: TilingConfig, mask_dir: Path | None, overwrite: bool,
               result: TilingResult) -> list[_Job]:
    """One job per slide to tile; the slides whose grid is up to date go to ``result.skipped`` (resume)."""
    jobs: list[_Job] = []
    cfg_d = cfg.model_dump()
    for row in co.rows():
        sid = str(row["slide_id"])
        user_mask = _find_user_mask(row, mask_dir, sid)
        h5 = ws.tiles_h5(sid)
        expected = tiling_attrs(cfg, sid, str(row["path"]), user_mask if user_mask else "auto")
        if not overwrite:
            n = tiles_up_to_date(h5, expected, slide_mpp=cfg.slide_mpp)
            if n is not None:
                result.skipped[sid] = n
                continue
        jobs.append(_Job(sid, str(row["path"]), str(h5), str(ws.tiles_png(sid)), user_mask, cfg_d))
    if result.skipped:
        log.info("%d slide(s) already tiled with this configuration (use --overwrite to redo)", len(result.skipped))
    return jobs


def _run_jobs(jobs: list[_Job], workers: int, result: TilingResult, show_progress: bool | None) -> None:
    """Tile the slides of ``jobs``, here (one worker or one slide) or in spawned worker processes; each
    slide's tile count goes to ``result.tiled``, its failure (one line) to ``result.failures``."""

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
            return
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx,
                                 initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
            futures: dict[Future, _Job] = {pool.submit(_run_job, j): j for j in jobs}
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    record(*fut.result())
                except Exception as e:  # noqa: BLE001 - a crashed worker (e.g. a decoder segfault)
                    record(job.slide_id, None, f"{job.slide_path}: worker process died ({type(e).__name__}); "
                                               f"the file may be corrupt: re-run with --workers 1 to see")
                bar.advance(task)


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
    wait: bool = False,
) -> TilingResult:
    """Tile every slide of ``cohort`` into ``workspace/tiles/`` (see the module docstring).

    Args:
        cohort: a cohort CSV path or a :class:`~histokd.data.cohort.Cohort` (the ``label`` column is optional).
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
    from histokd.data.cohort import Cohort, read_cohort  # on use: spawned workers need not import pandas

    t0 = time.perf_counter()
    cfg = TilingConfig(target_mpp=float(mpp), patch_size=int(size), overlap=int(overlap), min_tissue=float(min_tissue),
                       slide_mpp=slide_mpp, backend=backend, tissue=tissue_params or TissueParams())
    if isinstance(cohort, Cohort):
        co = cohort.with_label_map(label_map)
    else:
        co = read_cohort(cohort, drop_invalid=True, label_map=label_map, require_label=False)
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    mask_dir = Path(tissue_mask_dir) if tissue_mask_dir is not None else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise InputError(f"{mask_dir}: tissue mask folder not found; give a folder of <slide_id>.png/.geojson masks")

    with ws.writer(ws.tiles_dir, wait=wait, create=True):
        n_stale = clean_stale_temps(ws.tiles_dir) + clean_stale_temps(ws.root)
        if n_stale:
            log.info("removed %d temporary file(s) left by an interrupted run", n_stale)
        _merge_into_workspace(ws, co).write(ws.cohort_csv)

        result = TilingResult(workspace=ws.root)
        result.failures.update(co.invalid)
        jobs = _plan_jobs(ws, co, cfg, mask_dir, overwrite, result)
        _run_jobs(jobs, workers, result, show_progress)
        # a run killed just before this one may have had workers still ending when the sweep above ran
        clean_stale_temps(ws.tiles_dir)
        result.seconds = time.perf_counter() - t0
        return result
