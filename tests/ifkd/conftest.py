"""IFKD fixtures built by hand: in-memory slides at the working resolution, and a tiny workspace
(pyramidal TIFFs, PNG masks, teacher predictions h5, feature files, cohort CSV)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from histokd.segmentation.regions import SlideImage

MPP0 = 2.0  # level-0 µm/px of the fixture slides (small files; 8 µm/px working = 4x downsample)
SIZE0 = 384  # level-0 side, px
PATCH0 = 32  # tile side, level-0 px


def _blob_mask(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        r = rng.uniform(0.08, 0.15) * min(h, w)
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    return m


def paint(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """H&E-like RGB [h, w, 3] uint8: pink tissue, dark purple tumour where ``mask``, noise."""
    h, w = mask.shape
    img = np.empty((h, w, 3), np.float32)
    img[:] = (225, 160, 200)
    img[mask] = (120, 60, 150)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_slide_image(seed: int, label: int, shape=(48, 48), noisy_target: bool = True) -> SlideImage:
    """An in-memory slide: tumour blobs when ``label``; target = blocky, noisy version of the GT."""
    rng = np.random.default_rng(seed)
    gt = _blob_mask(rng, shape, 2) if label else np.zeros(shape, bool)
    img = paint(gt, rng)
    # MIL-like pseudo-mask: 8x8-px blocks with the block's tumour fraction, plus noise
    blk = gt.reshape(shape[0] // 8, 8, shape[1] // 8, 8).mean((1, 3))
    if noisy_target:
        blk = np.clip(blk * 0.8 + rng.uniform(0, 0.3, blk.shape), 0, 1)
    target = np.kron(blk, np.ones((8, 8))).astype(np.float32)
    return SlideImage(f"s{seed}", img, target, label, gt, np.ones(shape, bool), (4.0, 4.0))


@pytest.fixture
def mem_slides() -> tuple[list[SlideImage], list[SlideImage]]:
    train = [make_slide_image(i, i % 2) for i in range(4)]
    val = [make_slide_image(100 + i, (i + 1) % 2) for i in range(2)]
    return train, val


@pytest.fixture
def tiny_workspace(tmp_path: Path) -> dict:
    """RUN/ with cohort.csv, 6 slides (train/val/test x tumour/normal), tiles, features, teacher predictions."""
    from histokd.features.store import write_features
    from histokd.synth.tiff import write_pyramid_tiff

    run = tmp_path / "run"
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    teacher = "teacher1"
    enc = "handcrafted"
    pdir = run / "predictions" / teacher
    (run / "models" / teacher).mkdir(parents=True)
    (run / "models" / teacher / "classes.json").write_text(json.dumps(["normal", "tumour"]))
    splits = ["train", "train", "train", "train", "val", "val", "test", "test"]
    for i, split in enumerate(splits):
        sid = f"slide{i}"
        label = i % 2
        gt = _blob_mask(rng, (SIZE0, SIZE0), 2) if label else np.zeros((SIZE0, SIZE0), bool)
        img = paint(gt, rng)
        write_pyramid_tiff(data / f"{sid}.tiff", img, mpp=MPP0, n_levels=3, tile=128, compression="zlib")
        Image.fromarray((gt[::4, ::4] * 255).astype(np.uint8)).save(data / f"{sid}_mask.png")
        ys, xs = np.mgrid[0:SIZE0:PATCH0, 0:SIZE0:PATCH0]
        coords = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)
        frac = np.array([gt[y : y + PATCH0, x : x + PATCH0].mean() for x, y in coords], np.float32)
        p = np.clip(frac * 0.8 + rng.uniform(0, 0.25, len(frac)), 0, 1).astype(np.float32)
        feats = np.stack([frac, rng.normal(size=len(frac))], 1).astype(np.float32)
        write_features(run / "features" / enc / f"{sid}.h5", feats, coords,
                       {"encoder": enc, "patch_size_level0": PATCH0, "target_mpp": MPP0, "patch_size": PATCH0})
        (run / "tiles").mkdir(parents=True, exist_ok=True)
        with h5py.File(run / "tiles" / f"{sid}.h5", "w") as f:  # contract 4
            f.create_dataset("coords", data=coords)
            f.create_dataset("tissue", data=np.ones(len(coords), np.float32))
            f.attrs.update({"patch_size": PATCH0, "patch_size_level0": PATCH0, "target_mpp": MPP0,
                            "level0_mpp": MPP0, "overlap": 0, "slide_id": sid, "min_tissue": 0.5})
        pdir.mkdir(parents=True, exist_ok=True)
        with h5py.File(pdir / f"{sid}.h5", "w") as f:
            f.create_dataset("instance_probs", data=np.stack([1 - p, p], 1))
            f.create_dataset("coords", data=coords)
            f.attrs["classes"] = json.dumps(["normal", "tumour"])
            f.attrs["patch_size_level0"] = PATCH0
            f.attrs["bag_probs"] = np.array([1 - p.max(), p.max()], np.float32)
            f.attrs["model_id"] = teacher
            f.attrs["slide_id"] = sid
        rows.append(f"{sid},{data / (sid + '.tiff')},{'tumour' if label else 'normal'},{split},"
                    f"{data / (sid + '_mask.png')}")
    (run / "cohort.csv").write_text("slide_id,path,label,split,mask_path\n" + "\n".join(rows) + "\n")
    return {"run": run, "teacher": teacher, "encoder": enc, "splits": splits}
