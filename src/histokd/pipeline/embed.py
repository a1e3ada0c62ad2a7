"""``histokd embed`` / ``histokd.embed(...)``: tile features for every tiled slide -> ``RUN/features/<encoder>/``.

Finds the slides of the workspace (its ``cohort.csv``, else every ``tiles/*.h5``), makes one
:class:`~histokd.features.extract.SlideJob` per slide from its tile grid, skips the slides already embedded
with the same encoder, grid and precision (:func:`~histokd.features.extract.is_done`, unless ``overwrite``)
and runs the others locally (:func:`~histokd.features.extract.run_jobs`) or on a Ray cluster.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histokd.errors import HistokdError, InputError
from histokd.features.encoders import DEFAULT_ENCODER, build_encoder
from histokd.features.extract import SlideJob, is_done, resolve_device, run_jobs
from histokd.features.runtime import build_runner, resolve_runtime
from histokd.features.stain import build_stain_normalizer
from histokd.progress import progress
from histokd.slides.tiling import read_tiles
from histokd.workspace import Workspace, clean_stale_temps

log = logging.getLogger("histokd")


@dataclass
class EmbedResult:
    out_dir: Path
    encoder: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    n_tiles: int = 0
    seconds: float = 0.0
    runtime: str = "torch"  # what ran the encoder: torch | onnx | openvino
    export_seconds: float = 0.0  # exporting the ONNX graph (0 when cached); not part of ``seconds``
    setup_seconds: float = 0.0  # the encoder's first (warm-up) batch; not part of ``seconds``

    @property
    def tiles_per_s(self) -> float:
        return self.n_tiles / self.seconds if self.seconds > 0 else 0.0


def _grid(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Tile grid (contract 4): ``coords`` [N, 2] and attrs."""
    grid = read_tiles(path)
    return np.asarray(grid.coords, np.int64), dict(grid.attrs)


def _attr(attrs: dict[str, Any], key: str, path: Path) -> Any:
    if key not in attrs:
        raise InputError(f"{path}: tile grid lacks attribute {key!r}; re-run `histokd tile`")
    v = attrs[key]
    return v.decode() if isinstance(v, bytes) else v


def _slides_of(ws: Workspace) -> list[tuple[str, str | None]]:
    """(slide_id, slide path or None) in cohort order; without ``cohort.csv``, every ``tiles/*.h5``."""
    if ws.cohort_csv.exists():
        from histokd.data.cohort import load_workspace_cohort

        df = load_workspace_cohort(ws).df
        return [(str(r.slide_id), str(r.path)) for r in df.itertuples()]
    if not ws.tiles_dir.is_dir():
        raise InputError(f"{ws.root}: no tiles/ and no cohort.csv; run `histokd tile COHORT.csv -w {ws.root}` first")
    return [(p.stem, None) for p in sorted(ws.tiles_dir.glob("*.h5"))]


def make_jobs(ws: Workspace, encoder: str, slides: list[str] | None = None) -> tuple[list[SlideJob], dict[str, str]]:
    """One job per slide of the workspace; slides without a readable tile grid go to the failures."""
    jobs: list[SlideJob] = []
    failed: dict[str, str] = {}
    for sid, path in _slides_of(ws):
        if slides is not None and sid not in slides:
            continue
        tpath = ws.tiles_h5(sid)
        try:
            if not tpath.exists():
                raise InputError(f"{tpath}: no tile grid for slide {sid}; run `histokd tile` first")
            coords, attrs = _grid(tpath)
            jobs.append(
                SlideJob(
                    slide_id=sid,
                    slide_path=path or str(_attr(attrs, "slide_path", tpath)),
                    out_path=ws.features_h5(encoder, sid),
                    coords=coords,
                    target_mpp=float(_attr(attrs, "target_mpp", tpath)),
                    patch_size=int(_attr(attrs, "patch_size", tpath)),
                    patch_size_level0=int(_attr(attrs, "patch_size_level0", tpath)),
                    level0_mpp=float(attrs["level0_mpp"]) if "level0_mpp" in attrs else None,
                )
            )
        except HistokdError as e:
            failed[sid] = str(e)
    return jobs, failed


def _check_options(batch_size: int, workers: int, dtype: str, engine: str, stain_norm: str | None) -> None:
    if batch_size < 1 or workers < 0:
        raise InputError(f"--batch-size {batch_size} / --workers {workers}: want batch size >= 1 and workers >= 0")
    if dtype not in ("float32", "float16"):
        raise InputError(f"--dtype {dtype!r}: choose float32 or float16")
    if engine not in ("local", "ray"):
        raise InputError(f"--engine {engine!r}: choose local or ray")
    build_stain_normalizer(stain_norm)  # validate the name early


def _warm_runner(result: EmbedResult, enc: Any, runtime: str, device: str, precision: str, threads: int | None,
                 warm_batch: int) -> Any:
    """The local encoder runner, warmed up; its runtime, export and warm-up times go to ``result``."""
    runner, result.runtime, result.export_seconds = build_runner(enc, runtime, device, precision, threads)
    # one batch of blank tiles first: either runtime spends its first call of a batch shape on set-up
    # (memory arenas, kernel choice: ~1 s), which is start-up, not throughput
    t_warm = time.perf_counter()
    if warm_batch:
        runner(torch.zeros((warm_batch, 3, enc.input_size, enc.input_size), dtype=torch.uint8))
    result.setup_seconds = time.perf_counter() - t_warm
    log.info("encoder %s runs on %s through %s (%s); warm-up %.1f s", result.encoder, device, result.runtime,
             precision, result.setup_seconds)
    return runner


def embed(
    workspace: str | os.PathLike[str] | Workspace,
    encoder: str = DEFAULT_ENCODER,
    *,
    weights: str | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str = "auto",
    precision: str = "fp32",
    runtime: str = "auto",
    dtype: str = "float32",
    engine: str = "local",
    address: str | None = None,
    overwrite: bool = False,
    stain_norm: str | None = None,
    slides: list[str] | None = None,
    threads: int | None = None,
    wait: bool = False,
) -> EmbedResult:
    """Extract features for every tiled slide of ``workspace`` into ``features/<encoder>/<slide>.h5``.

    ``engine="ray"`` spreads slides over a Ray cluster (``address``; a local one when ``None``). Slides
    whose file exists and matches are skipped unless ``overwrite``. Failed slides are listed in
    ``EmbedResult.failed``; the others are written. ``runtime``: ``auto`` (on CPU where the encoder
    exports, OpenVINO, or ONNX Runtime where OpenVINO is not installed; else PyTorch), ``torch``, ``onnx`` or
    ``openvino`` (see :mod:`histokd.features.runtime`).
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    _check_options(batch_size, workers, dtype, engine, stain_norm)
    device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    enc = build_encoder(encoder, weights=weights, device=device)
    result = EmbedResult(out_dir=ws.features_dir(encoder), encoder=encoder)
    with ws.writer(result.out_dir, wait=wait):
        clean_stale_temps(result.out_dir)
        jobs, result.failed = make_jobs(ws, encoder, slides)
        todo = []
        for job in jobs:
            if not overwrite and is_done(job, enc, dtype, stain_norm, precision):
                result.skipped.append(job.slide_id)
            else:
                todo.append(job)
        if result.skipped:
            log.info("%d slide(s) already embedded with %s; skipped (use --overwrite to redo)", len(result.skipped), encoder)
        n_tiles = sum(len(j.coords) for j in todo)
        runner = None
        if todo and engine == "local":
            runner = _warm_runner(result, enc, runtime, device, precision, threads, min(batch_size, n_tiles))
        else:
            result.runtime = resolve_runtime(runtime, enc, device, precision)
        t0 = time.perf_counter()
        with progress() as bar:
            task = bar.add_task(f"embed {encoder}", total=n_tiles, unit="tiles")

            def advance(n: int) -> None:
                bar.advance(task, n)

            opts = dict(batch_size=batch_size, workers=workers, precision=precision, dtype=dtype, stain_norm=stain_norm)
            if engine == "ray":
                from histokd.features.ray_engine import run_ray

                written, failed = run_ray(todo, encoder, weights=weights, device=device, address=address,
                                          on_tiles=advance, runtime=runtime, threads=threads, **opts)
            else:
                written, failed = run_jobs(todo, enc, runner, device=device, runtime=result.runtime,
                                           on_tiles=advance, **opts)
        result.seconds = time.perf_counter() - t0
        result.written, result.n_tiles = written, sum(len(j.coords) for j in todo if j.slide_id in set(written))
        result.failed.update(failed)
        log.info(
            "embedded %d slide(s), %d tiles in %.1f s (%.1f tiles/s) -> %s",
            len(written), result.n_tiles, result.seconds, result.tiles_per_s, result.out_dir,
        )
        return result
