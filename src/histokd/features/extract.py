"""Tile feature extraction: ``histokd embed`` / :func:`embed`.

Tiles are read at the grid's mpp straight from the slides (no tile images on disk) by DataLoader worker
processes, one *batch* per item, so that reading and JPEG decoding overlap the encoder's compute. One
DataLoader spans every slide of the run (a batch never crosses two slides), so the workers stay busy
across slide boundaries. Features are streamed into ``features/<encoder>/<slide>.h5`` with
:class:`~histokd.features.store.FeatureWriter` (chunked, atomic): memory stays bounded whatever the
number of tiles. Slides whose file exists and matches (encoder, weights hash, grid, dtype, stain
normalisation) are skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from histokd.errors import FeatureError, HistokdError, InputError
from histokd.features.encoders import DEFAULT_ENCODER, Encoder, build_encoder
from histokd.features.runtime import Runner, build_runner, resolve_runtime
from histokd.features.stain import StainNormalizer, build_stain_normalizer
from histokd.features.store import FeatureWriter, feature_file_info
from histokd.progress import progress
from histokd.workspace import Workspace, clean_stale_temps

log = logging.getLogger("histokd")

@dataclass
class SlideJob:
    """One slide to embed: where its slide and tile grid are, where its features go."""

    slide_id: str
    slide_path: str
    out_path: Path
    coords: np.ndarray  # [N, 2] int64 level-0 top-left px
    target_mpp: float  # µm/px of the tile grid
    patch_size: int  # tile side in px at target_mpp
    patch_size_level0: int
    level0_mpp: float | None  # the mpp the grid was made with (may override the slide's metadata)


@dataclass
class EmbedResult:
    out_dir: Path
    encoder: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    n_tiles: int = 0
    seconds: float = 0.0
    runtime: str = "torch"  # what ran the encoder: torch | onnx
    export_seconds: float = 0.0  # exporting the ONNX graph (0 when cached); not part of ``seconds``

    @property
    def tiles_per_s(self) -> float:
        return self.n_tiles / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- reading tiles


class TileBatches(Dataset):
    """Item ``i`` -> ``(job index, start row, uint8 [b, 3, S, S] or None, error message or "")``.

    Each tile covers ``patch_size_level0`` level-0 px (the grid's tile) and is read directly at
    ``S = read_size`` px, i.e. at ``target_mpp * patch_size / S`` µm/px, by the slide reader.
    A slide that fails to read yields an error message instead of raising, so that the other slides go on.
    """

    def __init__(
        self, jobs: list[SlideJob], batch_size: int, read_size: int, stain: StainNormalizer | None = None
    ) -> None:
        self.jobs = jobs
        self.read_size = int(read_size)
        self.stain = stain
        self.plan = [
            (j, s, min(s + batch_size, len(job.coords)))
            for j, job in enumerate(jobs)
            for s in range(0, len(job.coords), batch_size)
        ]
        self._open: tuple[int, Any] | None = None  # per worker process: the slide read last

    def __len__(self) -> int:
        return len(self.plan)

    def _slide(self, j: int) -> Any:
        from histokd.slides.reader import open_slide

        if self._open is not None and self._open[0] == j:
            return self._open[1]
        if self._open is not None:
            with contextlib.suppress(Exception):
                self._open[1].close()
            self._open = None
        job = self.jobs[j]
        slide = open_slide(job.slide_path, mpp=job.level0_mpp)
        self._open = (j, slide)
        return slide

    def __getitem__(self, i: int) -> tuple[int, int, torch.Tensor | None, str]:
        j, start, stop = self.plan[i]
        job = self.jobs[j]
        mpp = job.target_mpp * job.patch_size / self.read_size
        try:
            slide = self._slide(j)
            out = np.empty((stop - start, self.read_size, self.read_size, 3), np.uint8)
            for k, (x, y) in enumerate(job.coords[start:stop]):
                tile = slide.read_region_mpp(int(x), int(y), self.read_size, mpp)
                out[k] = self.stain(tile) if self.stain is not None else tile
        except HistokdError as e:
            return j, start, None, str(e)
        except Exception as e:  # noqa: BLE001 - a broken slide must not stop the others
            return j, start, None, f"{job.slide_path}: cannot read tiles ({type(e).__name__}: {e})"
        return j, start, torch.from_numpy(out).permute(0, 3, 1, 2), ""


def _malloc_trimmer() -> Callable[[], None]:
    """``malloc_trim(0)`` on glibc, else a no-op.

    Batches arrive from the worker processes in fresh buffers; glibc keeps the freed ones in its heaps
    (its mmap threshold grows with the buffer size), so without trimming the main process's RSS climbs
    by ~10 KB per tile before it levels off. Trimming every few batches keeps it flat (measured in
    ``benchmarks/embed.py``).
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import ctypes.util

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            trim = libc.malloc_trim
            return lambda: trim(0) and None
    return lambda: None


def _worker_init(_: int) -> None:
    # readers decode in C; one torch thread per worker leaves the cores to the encoder
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- jobs from a workspace


def _grid(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Tile grid (contract 4): ``coords`` [N, 2] and attrs."""
    try:
        from histokd.slides.tiling import read_tiles
    except ImportError:  # the tiling module is optional for feature-only installs; contract-4 layout
        read_tiles = None
    if read_tiles is not None:
        grid = read_tiles(path)
        return np.asarray(grid.coords, np.int64), dict(grid.attrs)
    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["coords"][()], np.int64).reshape(-1, 2), dict(f.attrs)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: cannot read the tile grid ({e}); re-run `histokd tile`") from e


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


# --------------------------------------------------------------------------- provenance / resume


def _attrs_for(job: SlideJob, enc: Encoder, stain_norm: str | None, precision: str = "fp32",
               runtime: str = "torch") -> dict[str, Any]:
    import histokd

    return {
        "encoder": enc.name,
        "weights_hash": enc.weights_hash,
        "histokd_version": histokd.__version__,
        "target_mpp": job.target_mpp,
        "patch_size": job.patch_size,
        "patch_size_level0": job.patch_size_level0,
        "slide_id": job.slide_id,
        "encoder_input_size": enc.input_size,
        "encoder_mpp": enc.mpp,
        "stain_norm": stain_norm or "none",
        "precision": precision,
        "runtime": runtime,
    }


def is_done(job: SlideJob, enc: Encoder, dtype: str, stain_norm: str | None, precision: str = "fp32") -> bool:
    """True when ``job.out_path`` holds this slide's features from the same encoder, weights, grid and
    precision. The runtime is not part of the key: at fp32, ONNX Runtime and PyTorch give the same
    features (cosine >= 0.9999, checked whenever a graph is loaded)."""
    info = feature_file_info(job.out_path)
    if info is None:
        return False
    shape, ds_dtype, attrs = info
    want = _attrs_for(job, enc, stain_norm, precision)
    if shape != (len(job.coords), enc.dim) or ds_dtype != dtype:
        return False
    if str(attrs.get("precision", "fp32")) != precision:  # files from before the attribute are fp32
        return False
    for k in ("encoder", "weights_hash", "patch_size", "patch_size_level0", "stain_norm"):
        if str(attrs.get(k)) != str(want[k]):
            return False
    if not np.isclose(float(attrs.get("target_mpp", -1)), job.target_mpp):
        return False
    with h5py.File(job.out_path, "r") as f:
        return bool(np.array_equal(f["coords"][()], job.coords))


# --------------------------------------------------------------------------- the extraction loop


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    return device


def run_jobs(
    jobs: list[SlideJob],
    enc: Encoder,
    runner: Runner,
    *,
    batch_size: int = 64,
    workers: int = 2,
    device: str = "cpu",
    precision: str = "fp32",
    runtime: str = "torch",
    dtype: str = "float32",
    stain_norm: str | None = None,
    on_tiles: Callable[[int], None] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Embed every job's tiles with ``runner`` (``enc`` run by PyTorch on ``device`` or by ONNX Runtime, see
    :mod:`histokd.features.runtime`; ``runtime`` / ``precision`` name it in the files). Returns (written, failed)."""
    cuda = device.startswith("cuda")
    stain = build_stain_normalizer(stain_norm)
    ds = TileBatches(jobs, batch_size, enc.input_size, stain)
    loader = DataLoader(
        ds,
        batch_size=None,  # items are already batches
        shuffle=False,
        num_workers=workers,
        pin_memory=cuda,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        # fork starts workers in milliseconds and shares the coords arrays copy-on-write (Linux only)
        multiprocessing_context="fork" if workers > 0 and sys.platform.startswith("linux") else None,
    )
    writers: dict[int, FeatureWriter] = {}
    written: list[str] = []
    failed: dict[str, str] = {}

    def writer(j: int) -> FeatureWriter:
        if j not in writers:
            job = jobs[j]
            attrs = _attrs_for(job, enc, stain_norm, precision, runtime)
            writers[j] = FeatureWriter(job.out_path, job.coords, enc.dim, attrs, dtype)
        return writers[j]

    trim = _malloc_trimmer()
    for j, job in enumerate(jobs):  # slides with no tiles: an empty, valid file
        if len(job.coords) == 0:
            writer(j).close()
            written.append(job.slide_id)
    try:
        with torch.inference_mode():
            for step, (j, start, imgs, err) in enumerate(loader):
                if step % 16 == 15:
                    trim()
                sid = jobs[j].slide_id
                if sid in failed:
                    continue
                if imgs is None:
                    failed[sid] = err
                    if j in writers:
                        writers.pop(j).abort()
                    if on_tiles:
                        on_tiles(len(jobs[j].coords) - start)
                    continue
                feats = runner(imgs)
                try:
                    w = writer(j)
                    w.write(start, feats)
                    if start + len(feats) == w.n:
                        writers.pop(j).close()
                        written.append(sid)
                except FeatureError as e:
                    failed[sid] = str(e)
                    if j in writers:
                        writers.pop(j).abort()
                if on_tiles:
                    on_tiles(len(feats))
    finally:
        for w in writers.values():
            w.abort()
    return written, failed


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
) -> EmbedResult:
    """Extract features for every tiled slide of ``workspace`` into ``features/<encoder>/<slide>.h5``.

    ``engine="ray"`` spreads slides over a Ray cluster (``address``; a local one when ``None``). Slides
    whose file exists and matches are skipped unless ``overwrite``. Failed slides are listed in
    ``EmbedResult.failed``; the others are written. ``runtime``: ``auto`` (ONNX Runtime on CPU where the
    encoder exports, else PyTorch), ``torch`` or ``onnx`` (see :mod:`histokd.features.runtime`).
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    if batch_size < 1 or workers < 0:
        raise InputError(f"--batch-size {batch_size} / --workers {workers}: want batch size >= 1 and workers >= 0")
    if dtype not in ("float32", "float16"):
        raise InputError(f"--dtype {dtype!r}: choose float32 or float16")
    if engine not in ("local", "ray"):
        raise InputError(f"--engine {engine!r}: choose local or ray")
    build_stain_normalizer(stain_norm)  # validate the name early
    device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    enc = build_encoder(encoder, weights=weights, device=device)
    result = EmbedResult(out_dir=ws.features_dir(encoder), encoder=encoder)
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
        runner, result.runtime, result.export_seconds = build_runner(enc, runtime, device, precision, threads)
        log.info("encoder %s runs on %s through %s (%s)", encoder, device, result.runtime, precision)
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
