"""Tiling and tile-reading throughput.

Prints tiles/s for ``histokd tile`` (tissue detection + grid + h5 + QC PNG) and tiles/s for reading the
tiles at the target mpp with ``Slide.read_region_mpp``, for each reader backend.

    .venv/bin/python benchmarks/tiling.py --slides 4 --size 4096            # generates a synthetic cohort
    .venv/bin/python benchmarks/tiling.py --cohort my_cohort.csv --mpp 0.5  # your own slides
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _generate(out: Path, slides: int, size: int, seed: int, workers: int) -> Path:
    from histokd.synth.generate import synth

    return synth(out, slides=slides, seed=seed, size=size, workers=workers, show_progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, help="cohort CSV (default: generate a synthetic one)")
    ap.add_argument("--slides", type=int, default=4, help="synthetic slides to generate")
    ap.add_argument("--size", type=int, default=4096, help="synthetic slide side, level-0 px")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mpp", type=float, default=0.5, help="target µm/px")
    ap.add_argument("--tile-size", type=int, default=224, help="tile side, px at --mpp")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-read", type=int, default=2000, help="tiles read per backend (spread over slides)")
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    os.environ.setdefault("HISTOKD_NO_PROGRESS", "1")

    from histokd.data.cohort import read_cohort
    from histokd.slides.reader import open_slide
    from histokd.pipeline.tile import tile
    from histokd.slides.tiling import read_tiles

    work = args.out or Path(tempfile.mkdtemp(prefix="histokd_bench_"))
    cohort = args.cohort
    if cohort is None:
        t = time.perf_counter()
        cohort = _generate(work / "cohort", args.slides, args.size, args.seed, args.workers)
        print(f"generated {args.slides} synthetic slides ({args.size} px) in {time.perf_counter() - t:.1f}s")
    co = read_cohort(cohort)

    res = tile(co, work / "run", mpp=args.mpp, size=args.tile_size, workers=args.workers, overwrite=True)
    n = sum(res.tiled.values())
    print(f"tiling: {len(res.tiled)} slides, {n} tiles in {res.seconds:.2f}s -> {n / res.seconds:,.1f} tiles/s "
          f"({len(res.tiled) / res.seconds:.2f} slides/s, workers={args.workers}); failures: {len(res.failures)}")

    grids = {sid: read_tiles(work / "run" / "tiles" / f"{sid}.h5") for sid in res.tiled}
    per_slide = max(1, args.max_read // max(1, len(grids)))
    for backend in ("openslide", "tiffslide"):
        count, secs = 0, 0.0
        for sid, g in grids.items():
            coords = g.coords[:per_slide]
            with open_slide(co.df.loc[sid, "path"], backend=backend) as s:
                t = time.perf_counter()
                for x, y in coords:
                    img = s.read_region_mpp(int(x), int(y), args.tile_size, args.mpp)
                secs += time.perf_counter() - t
                count += len(coords)
                assert img.shape == (args.tile_size, args.tile_size, 3) and img.dtype == np.uint8
        print(f"read_region_mpp [{backend}]: {count} tiles of {args.tile_size} px at {args.mpp} µm/px in {secs:.2f}s "
              f"-> {count / secs:,.1f} tiles/s (1 process)")


if __name__ == "__main__":
    main()
