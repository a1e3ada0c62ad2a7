"""Helpers of the predict tests (issue 17): tiny slides on glass, so tissue is detected (as ``predict`` does),
and a small model bundle trained on them in seconds.

Slides are 512 x 512 px pyramidal TIFFs at 0.5 µm/px: a 384 px square of pink H&E-like tissue on light glass;
tumour slides are purple over the tissue's left half. ``stain="hue"`` paints the same layout with the hues
rotated by 60 degrees (orange and crimson)
(another stain: the out-of-distribution case). Tiles are 32 px at 1 µm/px: 36 per slide.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from typer.testing import CliRunner, Result

from histokd.cli import app
from histokd.synth.tiff import write_pyramid_tiff

SIDE = 512
TILE_ARGS = ["--mpp", "1.0", "--size", "32", "-j", "1"]
_COLOURS = {"he": ((230, 160, 205), (110, 50, 150)), "hue": ((230, 184, 160), (150, 50, 90))}


def slide_image(seed: int, tumour: bool, stain: str = "he") -> np.ndarray:
    """[SIDE, SIDE, 3] uint8: glass with a square of tissue (see the module docstring)."""
    rng = np.random.default_rng(seed)
    img = np.full((SIDE, SIDE, 3), 238.0, np.float32)
    lo, hi = 64, SIDE - 64
    normal, tum = _COLOURS[stain]
    img[lo:hi, lo:hi] = normal
    if tumour:
        img[lo:hi, lo:(lo + hi) // 2] = tum
    img[lo:hi, lo:hi] += rng.normal(0, 14, (hi - lo, hi - lo, 3))
    img += rng.normal(0, 2, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def write_slide(path: Path, seed: int, tumour: bool, stain: str = "he") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_pyramid_tiff(path, slide_image(seed, tumour, stain), 0.5, n_levels=2)


def write_cohort(path: Path, rows: Sequence[Sequence[str]], header: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def training_cohort(root: Path) -> Path:
    """Twelve labelled slides, six per class, split 3/2/1 train/val/test per class."""
    splits = ["train", "train", "train", "val", "val", "test"]
    rows = []
    for i, sp in enumerate(splits):
        rows.append([f"n{i}", str(write_slide(root / f"n{i}.tif", i, False)), "normal", sp])
        rows.append([f"t{i}", str(write_slide(root / f"t{i}.tif", 100 + i, True)), "tumour", sp])
    return write_cohort(root / "cohort.csv", rows, ["slide_id", "path", "label", "split"])


def cli(*args: object) -> Result:
    """Run ``histokd ARGS`` in process; an exception that escapes the CLI fails the test."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"histokd {' '.join(map(str, args))} raised {r.exception!r}\n{r.output}") from r.exception
    assert "Traceback" not in r.output, r.output
    return r


def train_bundle(root: Path) -> Path:
    """Tile, embed (handcrafted) and train ABMIL on :func:`training_cohort`; returns ``RUN/models/m``."""
    co = training_cohort(root / "slides")
    run = root / "run"
    for args in (("tile", co, "-w", run, *TILE_ARGS), ("embed", "-w", run, "-e", "handcrafted", "-j", "0"),
                 ("train", "-w", run, "--method", "abmil", "--model-id", "m", "--max-epochs", "20")):
        r = cli(*args)
        assert r.exit_code == 0, r.output
    return run / "models" / "m"
