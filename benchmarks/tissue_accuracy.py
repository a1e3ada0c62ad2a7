"""Tissue detection against the synthetic generator's truth: for every slide of one or more cohorts made by
``histokd synth``, the tissue fraction found by :func:`histokd.slides.tissue.detect_tissue` against
``meta/<id>.json`` ``clean_tissue_fraction_of_slide`` (tissue not covered by pen ink; cohorts written before
that field: ``tissue_fraction_of_slide``). Prints how many slides are within 5 % / 10 % / 15 % (relative
error), the worst, and the worst slides with their pens (edge mark, strokes across the tissue).

    .venv/bin/python benchmarks/tissue_accuracy.py COHORT_DIR [COHORT_DIR ...] [--worst 12] [--ink-od]
        [--pen-dilate-um UM] [--param KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from histokd.slides.reader import open_slide
from histokd.slides.tissue import TissueParams, detect_tissue


def _pens(meta: dict) -> str:
    conf = meta["confounders"]
    edge = conf["pen"]
    over = conf.get("pen_over_tissue") or []
    parts = [f"edge {edge['colour']} {edge['opacity']:.2f}"] if edge else []
    parts += [f"over {q['colour']} {q['opacity']:.2f}" for q in over]
    return ", ".join(parts) or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cohorts", nargs="+", help="folders written by `histokd synth` (with meta/)")
    ap.add_argument("--worst", type=int, default=12, help="how many of the worst slides to list")
    ap.add_argument("--ink-od", action="store_true", help="also find ink by optical density (TissueParams.ink_od)")
    ap.add_argument("--pen-dilate-um", type=float, default=None, help="pen mask dilation (TissueParams.pen_dilate_um)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="any other TissueParams field (JSON value), e.g. --param ink_seed_score=7")
    args = ap.parse_args()
    extra = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
    params = TissueParams(ink_od=args.ink_od,
                          **({} if args.pen_dilate_um is None else {"pen_dilate_um": args.pen_dilate_um}), **extra)
    rows = []
    for d in map(Path, args.cohorts):
        for mf in sorted((d / "meta").glob("*.json")):
            meta = json.loads(mf.read_text(encoding="utf-8"))
            with open_slide(d / meta["files"]["slide"]) as s:
                found = float(detect_tissue(s, params).mask.mean())
            true = float(meta.get("clean_tissue_fraction_of_slide", meta["tissue_fraction_of_slide"]))
            rows.append((f"{d}/{meta['slide_id']}", true, found, abs(found - true) / true,
                         float(meta.get("ink_over_tissue_fraction", 0.0)), _pens(meta)))
    if not rows:
        raise SystemExit("no meta/*.json found: pass folders written by `histokd synth`")
    err = np.array([r[3] for r in rows])
    ink = np.array([r[4] for r in rows]) > 0
    print(f"{len(rows)} slides: within 5 %: {(err <= 0.05).sum()}, 5-10 %: {((err > 0.05) & (err <= 0.10)).sum()}, "
          f"10-15 %: {((err > 0.10) & (err <= 0.15)).sum()}, over 15 %: {(err > 0.15).sum()}, "
          f"worst {err.max():.3f}, median {np.median(err):.3f}")
    if ink.any():
        print(f"  {ink.sum()} slides with ink over tissue: within 5 %: {(err[ink] <= 0.05).sum()}, "
              f"worst {err[ink].max():.3f}; {(~ink).sum()} without: within 5 %: {(err[~ink] <= 0.05).sum()}"
              + (f", worst {err[~ink].max():.3f}" if (~ink).any() else ""))
    for name, true, found, e, inkf, pens in sorted(rows, key=lambda r: -r[3])[: args.worst]:
        print(f"  {name}: true {true:.3f} found {found:.3f} error {e:.3f} ink over {inkf:.3f} of the tissue; "
              f"pens: {pens}")


if __name__ == "__main__":
    main()
