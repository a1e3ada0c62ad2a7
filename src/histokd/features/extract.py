"""Tile feature extraction machinery: read tiles in batches, run the encoder, stream features to h5.

The verb (``histokd embed`` / ``histokd.embed(...)``: jobs from a workspace, resume, progress) is
:func:`histokd.pipeline.embed.embed`; this module is what it runs, and what the Ray actors run.

Tiles are read at the grid's mpp straight from the slides (no tile images on disk) by DataLoader worker
processes, one *batch* per item, so that reading and JPEG decoding overlap the encoder's compute. One
DataLoader spans every slide of the run (a batch never crosses two slides), so the workers stay busy
across slide boundaries. Features are streamed into ``features/<encoder>/<slide>.h5`` with
:class:`~histokd.features.store.FeatureWriter` (chunked, atomic): memory stays bounded whatever the
number of tiles. Slides whose file exists and matches (encoder, weights hash, grid, dtype, stain
normalisation) are skipped (:func:`is_done`), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from histokd.errors import FeatureError, HistokdError, InputError
from histokd.features.encoders import Encoder
from histokd.features.runtime import Runner
from histokd.features.stain import StainNormalizer, build_stain_normalizer
from histokd.features.store import FeatureWriter, feature_file_info


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
