"""Fixtures for the features tests: tiny H&E-like pyramidal TIFFs and hand-written tile grids (contract 4)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from histokd.synth.tiff import write_pyramid_tiff
from histokd.workspace import Workspace

LEVEL0_MPP = 0.25
TARGET_MPP = 0.5
PATCH = 32  # px at TARGET_MPP -> 64 level-0 px


def he_image(h: int, w: int, seed: int) -> np.ndarray:
    """[h, w, 3] uint8: pink stroma, purple nuclei, a white background margin."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:] = (230, 160, 205)
    img += rng.normal(0, 10, img.shape)
    yy, xx = np.mgrid[-9:10, -9:10]
    for cy, cx in (rng.uniform(0, 1, (h * w // 900, 2)) * (h, w)).astype(int):
        r = rng.uniform(4, 9)
        disk = yy**2 + xx**2 < r * r
        y0, x0 = cy - 9, cx - 9
        sub = img[max(y0, 0) : cy + 10, max(x0, 0) : cx + 10]
        d = disk[max(-y0, 0) :, max(-x0, 0) :][: sub.shape[0], : sub.shape[1]]
        sub[d] = (90 + rng.normal(0, 10), 60, 150)
    img[:, -32:] = 245  # background strip
    return img.clip(0, 255).astype(np.uint8)


def write_grid(ws: Workspace, slide_id: str, slide_path: Path, coords: np.ndarray) -> Path:
    path = ws.tiles_h5(slide_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        f.create_dataset("tissue", data=np.ones(len(coords), np.float32))
        f.attrs.update(
            patch_size=PATCH,
            patch_size_level0=int(PATCH * TARGET_MPP / LEVEL0_MPP),
            target_mpp=TARGET_MPP,
            level0_mpp=LEVEL0_MPP,
            overlap=0,
            slide_id=slide_id,
            slide_path=str(slide_path),
            min_tissue=0.5,
            histokd_version="test",
        )
    return path


def grid_coords(h: int, w: int) -> np.ndarray:
    step = int(PATCH * TARGET_MPP / LEVEL0_MPP)
    return np.array([(x, y) for y in range(0, h - step + 1, step) for x in range(0, w - step + 1, step)], np.int64)


@pytest.fixture(scope="session")
def slide_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("slides")
    out = {}
    for i, (h, w) in enumerate([(192, 256), (128, 192), (128, 128)]):
        out[f"s{i}"] = write_pyramid_tiff(root / f"s{i}.tiff", he_image(h, w, i), mpp=LEVEL0_MPP, n_levels=2, tile=64)
    return out


@pytest.fixture()
def workspace(tmp_path: Path, slide_files: dict[str, Path]) -> Workspace:
    """A run folder with tile grids for three slides (12, 6 and 4 tiles), no cohort.csv."""
    ws = Workspace(tmp_path / "run")
    import tifffile

    for sid, p in slide_files.items():
        h, w = tifffile.imread(p, key=0).shape[:2]
        write_grid(ws, sid, p, grid_coords(h, w))
    return ws


@pytest.fixture(scope="session")
def make_he():
    """The ``he_image(h, w, seed)`` generator, for test modules (they cannot import conftest)."""
    return he_image
