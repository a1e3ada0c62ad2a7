"""Helpers of the bad-input suite (issue 16): tiny cohorts run through the real CLI, in process.

Slides are 256 x 256 px pyramidal TIFFs at 0.5 µm/px; every cohort row points at one all-tissue PNG
(``tissue_mask_path``), so tiling skips tissue detection and a whole tile/embed/train/label/report run
takes seconds. Tiles are 32 px at 1 µm/px (64 level-0 px): 16 per slide.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner, Result

from histokd.cli import app
from histokd.synth.tiff import write_pyramid_tiff

SIDE = 256
TILE_ARGS = ["--mpp", "1.0", "--size", "32", "--min-tissue", "0.1", "-j", "1"]


@dataclass
class SlideFiles:
    normal: list[Path]
    tumour: list[Path]
    tissue_png: Path


def _he(seed: int, tumour: bool) -> np.ndarray:
    """[SIDE, SIDE, 3] uint8 pink tissue; tumour slides are purple over their left half."""
    rng = np.random.default_rng(seed)
    img = np.empty((SIDE, SIDE, 3), np.float32)
    img[:] = (230, 160, 205)
    if tumour:
        img[:, : SIDE // 2] = (110, 50, 150)
    img += rng.normal(0, 12, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def make_slide_files(root: Path) -> SlideFiles:
    """Four normal and four tumour slides, and the all-tissue mask PNG, under ``root``."""
    normal = [write_pyramid_tiff(root / f"n{i}.tif", _he(i, False), 0.5, n_levels=2) for i in range(4)]
    tumour = [write_pyramid_tiff(root / f"t{i}.tif", _he(10 + i, True), 0.5, n_levels=2) for i in range(4)]
    png = root / "all_tissue.png"
    Image.fromarray(np.full((SIDE // 16, SIDE // 16), 255, np.uint8)).save(png)
    return SlideFiles(normal, tumour, png)


def write_cohort(path: Path, rows: Sequence[Sequence[str]], header: Sequence[str] = ("slide_id", "path", "label", "split"),
                 tissue_png: Path | None = None) -> Path:
    """A cohort CSV written with the csv module (so odd labels are quoted as a spreadsheet would)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([*header, *(["tissue_mask_path"] if tissue_png else [])])
        for r in rows:
            w.writerow([*r, *([str(tissue_png)] if tissue_png else [])])
    return path


def cohort_rows(files: SlideFiles, normal: str = "normal", tumour: str = "tumour") -> list[list[str]]:
    """Eight slides, four per class, split 2/1/1 train/val/test per class."""
    splits = ["train", "train", "val", "test"]
    rows = [[f"n{i}", str(p), normal, splits[i]] for i, p in enumerate(files.normal)]
    rows += [[f"t{i}", str(p), tumour, splits[i]] for i, p in enumerate(files.tumour)]
    return rows


def cli(*args: str) -> Result:
    """Run ``histokd ARGS`` in process; an exception that escapes the CLI fails the test."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"histokd {' '.join(map(str, args))} raised {r.exception!r}\n{r.output}") from r.exception
    assert "Traceback" not in r.output, r.output
    return r
