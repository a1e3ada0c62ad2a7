"""Benchmark of ``histokd embed``: forward-only vs whole-pipeline tiles/s per encoder, and peak memory
of a 100,000-tile slide.

    .venv/bin/python benchmarks/embed.py [--workspace RUN] [--encoders handcrafted efficientnet_lite0]
        [--batch-size 64] [--workers 2] [--threads 2] [--device auto] [--runtimes torch onnx openvino] [--slides 12]
        [--pipeline-runs 3] [--skip-memory]

- forward-only: the encoder alone on tiles already in memory (uint8 -> transform -> forward), after warm-up,
  once per runtime (``--runtimes torch onnx openvino``: PyTorch eager, ONNX Runtime, OpenVINO), with the lowest per-tile
  cosine of the runtime's features to PyTorch's on 16 random tiles;
- pipeline: a fresh ``histokd embed`` process on the cohort, the tiles/s it prints, the median of ``--pipeline-runs``
  runs (all printed: on the shared 2-core machine one run of the same command varied by ±10 %) (tiles read from the slides by DataLoader
  workers, features written to h5), into a scratch copy of the workspace (the user's features are untouched);
- tile reading: every tile of the cohort read in one process through histokd's reader (tiled-TIFF tiles decoded
  directly) and through OpenSlide alone, tiles/s of each and whether the pixels are identical;
- memory: a fresh process embeds one slide whose grid has 100,000 tiles (coordinates repeat over a small
  synthetic slide) with a 1280-d TorchScript encoder on 32-px inputs (so that it finishes in minutes);
  peak RSS of the main process and of the largest worker (``getrusage``) is reported. The features
  (100k x 1280 float32 = 512 MB) are streamed to disk in chunks, never held.

Without ``--workspace`` a synthetic cohort (``--slides`` slides of 1792 x 1792 px at 0.5 µm/px, 64 tiles each;
48 by default, 3,072 tiles, so that start-up is a small part of the pipeline figure: with 12 slides, 768 tiles,
a run lasted 4 s, of which worker start-up and the first batch's read were several percent) is made.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from scipy import ndimage

from histokd.errors import InputError
from histokd.features.encoders import build_encoder
from histokd.features.extract import resolve_device
from histokd.features.runtime import agreement, build_runner
from histokd.pipeline.embed import embed, make_jobs
from histokd.synth.tiff import write_pyramid_tiff
from histokd.workspace import Workspace


def synthetic_he(h: int, w: int, seed: int) -> np.ndarray:
    """[h, w, 3] uint8 H&E-like texture: pink stroma, purple nuclei blobs."""
    rng = np.random.default_rng(seed)
    nuclei = ndimage.gaussian_filter(rng.normal(size=(h, w)), 3) > 0.08
    img = np.empty((h, w, 3), np.float32)
    img[:] = (228, 158, 204)
    img[nuclei] = (95, 65, 150)
    img += rng.normal(0, 8, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def write_grid(ws: Workspace, sid: str, slide: Path, coords: np.ndarray, patch: int, mpp: float) -> None:
    """A tile grid in the contract-4 layout (as ``histokd tile`` writes it)."""
    ws.tiles_dir.mkdir(parents=True, exist_ok=True)
    with h5py.File(ws.tiles_h5(sid), "w") as f:
        f.create_dataset("coords", data=coords.astype(np.int64))
        f.create_dataset("tissue", data=np.ones(len(coords), np.float32))
        f.attrs.update(patch_size=patch, patch_size_level0=patch, target_mpp=mpp, level0_mpp=mpp, overlap=0,
                       slide_id=sid, slide_path=str(slide), min_tissue=0.5, histokd_version="bench")


def make_cohort(root: Path, n_slides: int = 4, side: int = 1792, patch: int = 224) -> Workspace:
    ws = Workspace(root / "run")
    for i in range(n_slides):
        slide = write_pyramid_tiff(root / f"slide{i}.tiff", synthetic_he(side, side, i), mpp=0.5, n_levels=3)
        xy = np.arange(0, side - patch + 1, patch)
        coords = np.stack(np.meshgrid(xy, xy), -1).reshape(-1, 2)
        write_grid(ws, f"slide{i}", slide, coords, patch, 0.5)
    return ws


def scratch_copy(ws: Workspace, root: Path) -> Workspace:
    """A run folder sharing ``ws``'s tiles and cohort, with its own empty ``features/``."""
    out = Workspace(root / "scratch")
    out.root.mkdir(parents=True)
    os.symlink(ws.tiles_dir.resolve(), out.tiles_dir)
    if ws.cohort_csv.exists():
        shutil.copy(ws.cohort_csv, out.cohort_csv)
    return out


def forward_only(enc, runner, ws: Workspace, batch_size: int, device: str, max_tiles: int = 512) -> float:
    """tiles/s of the encoder alone (transform + ``runner``) on real tiles of the cohort held in memory;
    the best of 3 passes after a warm-up."""
    from histokd.features.extract import TileBatches

    jobs, _ = make_jobs(ws, enc.name)
    ds = TileBatches(jobs, batch_size, enc.input_size)
    batches = [ds[i][2] for i in range(min(len(ds), max(1, max_tiles // batch_size)))]
    with torch.inference_mode():
        runner(batches[0])  # warm-up
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for b in batches:
                runner(b)
            best = min(best, time.perf_counter() - t0)
    return sum(len(b) for b in batches) / best


def reading(ws: Workspace, size: int) -> tuple[float, float, bool]:
    """Tiles/s of reading every tile of the cohort in this process, each slide opened afresh (cold caches):
    ``open_slide`` as histokd uses it (tiled-TIFF tiles decoded directly where that gives OpenSlide's pixels)
    and OpenSlide alone; and whether the two gave the same pixels."""
    from histokd.slides.reader import open_slide

    jobs, _ = make_jobs(ws, "x")
    seconds, n, same = {"auto": 0.0, "openslide": 0.0}, 0, True
    for job in jobs:  # slide by slide, so that only one slide's tiles are held
        mpp = job.target_mpp * job.patch_size / size
        got = {}
        for backend in seconds:
            t0 = time.perf_counter()
            slide = open_slide(job.slide_path, mpp=job.level0_mpp, backend=backend)
            got[backend] = [slide.read_region_mpp(int(x), int(y), size, mpp) for x, y in job.coords]
            slide.close()
            seconds[backend] += time.perf_counter() - t0
        same = same and all(np.array_equal(a, b) for a, b in zip(got["auto"], got["openslide"]))
        n += len(job.coords)
    return n / seconds["auto"], n / seconds["openslide"], same


def pipeline(ws: Workspace, encoder: str, **kw) -> float:
    """tiles/s of a fresh ``histokd embed`` process on ``ws`` (as a user runs it; the figure it prints)."""
    import re

    args = [sys.executable, "-m", "histokd", "embed", "-w", str(ws.root), "-e", encoder, "--overwrite"]
    for k, v in kw.items():
        if v is not None:
            args += [f"--{k.replace('_', '-')}", str(v)]
    r = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, HISTOKD_NO_PROGRESS="1"))
    m = re.search(r"tiles at ([0-9.]+) tiles/s", r.stdout)
    if r.returncode != 0 or m is None:
        raise SystemExit(f"pipeline failed ({r.returncode}): {r.stdout[-500:]} {r.stderr[-1000:]}")
    return float(m.group(1))


def peak_rss_mib() -> float:
    """Peak RSS of this process in MiB. Linux keeps ``ru_maxrss`` across exec (so a child started by a big
    parent would report the parent's peak); ``VmHWM`` belongs to the new address space, so prefer it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(root: Path, n_tiles: int, workers: int, batch_size: int) -> None:
    """Runs in a fresh process: embed one 100k-tile slide; print peak RSS (MiB) as JSON."""
    side, patch = 1024, 224
    slide = write_pyramid_tiff(root / "mem.tiff", synthetic_he(side, side, 7), mpp=0.5, n_levels=3)
    rng = np.random.default_rng(0)
    coords = rng.integers(0, side - patch, (n_tiles, 2))
    ws = Workspace(root / "memrun")
    write_grid(ws, "big", slide, coords, patch, 0.5)
    # a 1280-d encoder (the width of efficientnet_lite0) on 32-px inputs, so 100k tiles take minutes
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 1280, 8, stride=8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    ts = root / "wide.pt"
    torch.jit.save(torch.jit.script(net), str(ts), _extra_files={"histokd.json": json.dumps({"input_size": 32})})
    t0 = time.perf_counter()
    res = embed(ws, f"torchscript:{ts}", workers=workers, batch_size=batch_size, device="cpu")
    dt = time.perf_counter() - t0
    with h5py.File(ws.features_h5(f"torchscript:{ts}", "big")) as f:
        shape = f["features"].shape
    main = peak_rss_mib()
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"tiles": res.n_tiles, "shape": shape, "seconds": dt, "main_mib": main, "worker_mib": child}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, help="a tiled run folder (default: a synthetic cohort)")
    ap.add_argument("--encoders", nargs="*", default=["handcrafted", "efficientnet_lite0"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="tile-reading workers (histokd embed's default)")
    ap.add_argument("--slides", type=int, default=48, help="slides of the synthetic cohort (64 tiles each)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--runtimes", nargs="*", default=["torch", "onnx", "openvino"], help="encoder runtimes to compare")
    ap.add_argument("--memory-tiles", type=int, default=100_000)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--pipeline-runs", type=int, default=3, help="fresh embed runs per runtime; the median is reported")
    ap.add_argument("--_memory-child", dest="memory_child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HISTOKD_NO_PROGRESS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.memory_tiles, args.workers, args.batch_size)
        return

    device = resolve_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="histokd-bench-"))
    try:
        ws = Workspace(args.workspace) if args.workspace else make_cohort(tmp, n_slides=args.slides)
        n = sum(len(j.coords) for j in make_jobs(ws, "x")[0])
        print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
              f"workers {args.workers}, {n} tiles in {ws.root}")
        fast, plain, same = reading(ws, 224)
        print(f"tile reading, one process, cold: {fast:.0f} tiles/s (histokd's reader) vs {plain:.0f} (OpenSlide alone), "
              f"{fast / plain:.1f}x; pixels {'identical' if same else 'DIFFER'}")
        print(f"{'encoder':<22}{'runtime':>9}{'forward tiles/s':>17}{'pipeline tiles/s':>18}{'ratio':>8}"
              f"{'vs torch':>10}{'min cosine':>12}")
        for name in args.encoders:
            enc = build_encoder(name, device=device)
            torch_fwd = None
            for runtime in args.runtimes:
                try:
                    runner, used, export_s = build_runner(enc, runtime, device, args.precision, args.threads)
                except InputError as e:
                    print(f"{name:<22}{runtime:>9}  skipped: {e}")
                    continue
                if used != runtime:
                    print(f"{name:<22}{runtime:>9}  skipped: fell back to {used}")
                    continue
                fwd = forward_only(enc, runner, ws, args.batch_size, device)
                torch_fwd = fwd if runtime == "torch" else torch_fwd
                cos = agreement(enc, runner, n=16) if runtime != "torch" else 1.0
                scratch = scratch_copy(ws, tmp / f"{name}-{runtime}")
                runs = sorted(pipeline(scratch, name, batch_size=args.batch_size, workers=args.workers, device=device,
                                       precision=args.precision, threads=args.threads, runtime=runtime)
                              for _ in range(max(1, args.pipeline_runs)))
                pipe = float(np.median(runs))
                vs = f"{fwd / torch_fwd:.1f}x" if torch_fwd else "-"
                print(f"{name:<22}{runtime:>9}{fwd:>17.1f}{pipe:>18.1f}{pipe / fwd:>8.0%}{vs:>10}{cos:>12.7f}"
                      + f"   (pipeline runs: {', '.join(f'{r:.1f}' for r in runs)})"
                      + (f"   (first ONNX export {export_s:.1f} s, not counted)" if export_s else ""))
        if not args.skip_memory:
            child = subprocess.run(
                [sys.executable, __file__, "--_memory-child", str(tmp), "--memory-tiles", str(args.memory_tiles),
                 "--workers", str(args.workers), "--batch-size", "256"],
                capture_output=True, text=True, check=True,
            )
            m = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"memory: {m['tiles']} tiles -> features {tuple(m['shape'])} in {m['seconds']:.0f} s; peak RSS "
                  f"main {m['main_mib']:.0f} MiB, largest worker {m['worker_mib']:.0f} MiB (ru_maxrss, includes "
                  f"pages shared with main at fork)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
