"""Fixtures for More From Less: tiny pyramidal TIFFs (RGB H&E + 4-channel dense) with a planted marker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histokd.synth.tiff import write_pyramid_tiff

W, H = 512, 384
MPP = 0.5
# The planted marker: a 24 x 16 px rectangle at level-0 (x, y) = (300, 200), so asymmetric on purpose.
MARK_X, MARK_Y, MARK_W, MARK_H = 300, 200, 24, 16
MARK_CHANNEL = 1  # the "tumour marker" channel of the dense slide


def _he_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((H, W, 3), (235, 200, 225), np.uint8)  # pale pink background
    img = np.clip(img.astype(int) + rng.integers(-6, 7, size=img.shape), 0, 255).astype(np.uint8)
    img[MARK_Y : MARK_Y + MARK_H, MARK_X : MARK_X + MARK_W] = (40, 20, 120)  # dark blue block
    return img


def _dense_image(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 20, size=(H, W, 4)).astype(np.uint8)
    img[MARK_Y : MARK_Y + MARK_H, MARK_X : MARK_X + MARK_W, MARK_CHANNEL] = 250
    return img


@pytest.fixture(scope="session")
def paired_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """H&E RGB slide, aligned 4-channel slide, a translated one (+40, +24 px), a transposed one and
    one at twice the resolution (0.25 µm/px), all lossless so that pixel values can be compared."""
    d = tmp_path_factory.mktemp("mfl_slides")
    he = _he_image()
    dense = _dense_image()
    out = {
        "he": write_pyramid_tiff(d / "he.tif", he, MPP, n_levels=3, tile=128, compression="zlib"),
        "dense": write_pyramid_tiff(d / "dense.tif", dense, MPP, n_levels=3, tile=128),
    }
    shifted = np.zeros((H + 24, W + 40, 4), np.uint8)
    shifted[24:, 40:] = dense
    out["dense_shift"] = write_pyramid_tiff(d / "dense_shift.tif", shifted, MPP, n_levels=3, tile=128)
    out["dense_transposed"] = write_pyramid_tiff(
        d / "dense_t.tif", np.ascontiguousarray(dense.transpose(1, 0, 2)), MPP, n_levels=3, tile=128
    )
    out["dense_x2"] = write_pyramid_tiff(
        d / "dense_x2.tif", np.repeat(np.repeat(dense, 2, axis=0), 2, axis=1), MPP / 2, n_levels=3, tile=128
    )
    return out


def marker_box(tile: np.ndarray, channel: int, thresh: float) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the pixels of ``tile[..., channel]`` on the marker side of ``thresh``."""
    v = tile[..., channel].astype(float)
    m = v > thresh if channel == MARK_CHANNEL and tile.shape[-1] == 4 else v < thresh
    rows, cols = np.nonzero(m)
    assert len(rows), "marker not found in tile"
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


@pytest.fixture(scope="session")
def marker() -> dict:
    """Where the marker is planted (level-0 px) and a helper that finds it in a tile."""
    return {"x": MARK_X, "y": MARK_Y, "w": MARK_W, "h": MARK_H, "channel": MARK_CHANNEL, "mpp": MPP,
            "box": marker_box}


def write_tiles_h5(path: Path, slide_id: str, slide_path: Path, coords: np.ndarray, patch_size: int,
                   target_mpp: float, level0_mpp: float) -> None:
    """A tile grid file in the layout of contract 4 (written directly, so these tests need no tiler)."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=coords.astype(np.int64))
        f.create_dataset("tissue", data=np.ones(len(coords), np.float32))
        f.attrs.update({
            "patch_size": patch_size, "patch_size_level0": patch_size * target_mpp / level0_mpp,
            "target_mpp": target_mpp, "level0_mpp": level0_mpp, "overlap": 0, "slide_id": slide_id,
            "slide_path": str(slide_path), "min_tissue": 0.5, "histokd_version": "test",
        })


@pytest.fixture(scope="session")
def mfl_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with 3 slides (2 train, 1 test), paired 4-channel slides, tumour masks and tile grids
    of 32 px at 0.5 µm/px; tumour regions are darker in H&E and bright in the marker channel."""
    from PIL import Image

    root = tmp_path_factory.mktemp("mfl_run")
    rows = []
    for i, (label, split) in enumerate([("tumour", "train"), ("normal", "train"), ("tumour", "test")]):
        sid = f"s{i}"
        rng = np.random.default_rng(10 + i)
        tum = np.zeros((H, W), bool)
        if label == "tumour":
            tum[64:256, 96 + 64 * i : 288 + 64 * i] = True
        he = np.clip(rng.normal(210, 12, (H, W, 3)), 0, 255)
        he[tum] -= (90, 110, 40)
        dense = rng.integers(0, 30, (H, W, 4)).astype(float)
        dense[..., MARK_CHANNEL][tum] += 200
        hp = write_pyramid_tiff(root / "slides" / f"{sid}.tif", np.clip(he, 0, 255).astype(np.uint8), MPP,
                                n_levels=2, tile=128)
        dp = write_pyramid_tiff(root / "slides" / f"{sid}_mx.tif", np.clip(dense, 0, 255).astype(np.uint8), MPP,
                                n_levels=2, tile=128)
        mp = root / "slides" / f"{sid}_mask.png"
        Image.fromarray((tum[::4, ::4] * 255).astype(np.uint8)).save(mp)
        ys, xs = np.mgrid[0:H:32, 0:W:32]
        coords = np.stack([xs.ravel(), ys.ravel()], 1)
        write_tiles_h5(root / "tiles" / f"{sid}.h5", sid, hp, coords, 32, 0.5, MPP)
        rows.append((sid, hp, label, split, mp, dp))
    import pandas as pd

    pd.DataFrame(rows, columns=["slide_id", "path", "label", "split", "mask_path", "paired_path"]).to_csv(
        root / "cohort.csv", index=False
    )
    return root
