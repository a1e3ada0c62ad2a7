"""Tissue detection against the synthetic generator's truth: for every slide of one or more cohorts made by
``histokd synth``, the tissue fraction found by :func:`histokd.slides.tissue.detect_tissue` against
``meta/<id>.json`` ``tissue_fraction_of_slide``. Prints how many slides are within 10 % / 15 % (relative
error) and the worst slides with their pen colour (pen marks are the usual cause).

    .venv/bin/python benchmarks/tissue_accuracy.py COHORT_DIR [COHORT_DIR ...] [--worst 12]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from histokd.slides.reader import open_slide
from histokd.slides.tissue import detect_tissue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cohorts", nargs="+", help="folders written by `histokd synth` (with meta/)")
    ap.add_argument("--worst", type=int, default=12, help="how many of the worst slides to list")
    args = ap.parse_args()
    rows = []
    for d in map(Path, args.cohorts):
        for mf in sorted((d / "meta").glob("*.json")):
            meta = json.loads(mf.read_text(encoding="utf-8"))
            with open_slide(d / meta["files"]["slide"]) as s:
                found = float(detect_tissue(s).mask.mean())
            true = float(meta["tissue_fraction_of_slide"])
            pen = meta["confounders"]["pen"]
            rows.append((f"{d}/{meta['slide_id']}", true, found, abs(found - true) / true,
                         pen["colour"] if pen else "-"))
    if not rows:
        raise SystemExit("no meta/*.json found: pass folders written by `histokd synth`")
    err = np.array([r[3] for r in rows])
    low, mid, high = (err <= 0.10).sum(), ((err > 0.10) & (err <= 0.15)).sum(), (err > 0.15).sum()
    print(f"{len(rows)} slides: within 10 %: {low}, 10-15 %: {mid}, over 15 %: {high}, worst {err.max():.3f}")
    for name, true, found, e, pen in sorted(rows, key=lambda r: -r[3])[: args.worst]:
        print(f"  {name}: true {true:.3f} found {found:.3f} error {e:.3f} pen {pen}")


if __name__ == "__main__":
    main()
