"""End-to-end WENO (encoder=cnn): tiles read from slide pixels, a CNN trained jointly, label-time hook."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

MPP0 = 2.0  # level-0 µm/px
SIZE0 = 256  # level-0 side, px
PATCH0 = 32  # tile side, level-0 px -> 64 tiles per slide


def _slide(rng: np.random.Generator, tumour: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pink noisy tissue; a tumour slide gets a few dark-purple tiles (aligned to the tile grid)."""
    img = np.clip(rng.normal((225, 165, 200), 18, (SIZE0, SIZE0, 3)), 0, 255).astype(np.uint8)
    gt = np.zeros((SIZE0, SIZE0), bool)
    if tumour:
        n = SIZE0 // PATCH0
        for t in rng.choice(n * n, 6, replace=False):
            y, x = (t // n) * PATCH0, (t % n) * PATCH0
            gt[y : y + PATCH0, x : x + PATCH0] = True
        img[gt] = np.clip(rng.normal((95, 45, 125), 18, (int(gt.sum()), 3)), 0, 255).astype(np.uint8)
    return img, gt


@pytest.fixture
def pixel_workspace(tmp_path: Path) -> Path:
    """RUN/ with cohort.csv (+ masks), and features that carry NO information (noise): only pixels do."""
    from histokd.features.store import write_features
    from histokd.synth.tiff import write_pyramid_tiff

    run, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    splits = ["train"] * 8 + ["val"] * 4 + ["test"] * 4
    rows = []
    ys, xs = np.mgrid[0:SIZE0:PATCH0, 0:SIZE0:PATCH0]
    coords = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)
    for i, split in enumerate(splits):
        sid, tumour = f"s{i}", bool(i % 2)
        img, gt = _slide(rng, tumour)
        write_pyramid_tiff(data / f"{sid}.tiff", img, mpp=MPP0, n_levels=2, tile=128, compression="zlib")
        Image.fromarray((gt * 255).astype(np.uint8)).save(data / f"{sid}_mask.png")
        write_features(run / "features" / "noise" / f"{sid}.h5", rng.normal(size=(len(coords), 4)).astype(np.float32),
                       coords, {"encoder": "noise", "patch_size_level0": PATCH0, "target_mpp": MPP0,
                                "patch_size": PATCH0})
        rows.append(f"{sid},{data / (sid + '.tiff')},{'tumour' if tumour else 'normal'},{split},"
                    f"{data / (sid + '_mask.png')}")
    (run / "cohort.csv").write_text("slide_id,path,label,split,mask_path\n" + "\n".join(rows) + "\n")
    return run


def test_tile_cnn_shapes_and_mask() -> None:
    from histokd.models.tile_cnn import TileCNN

    m = TileCNN(out_dim=8)
    x = torch.randint(0, 255, (2, 3, 3, 32, 32), dtype=torch.uint8)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    z = m(x, mask)
    assert z.shape == (2, 3, 8)
    assert torch.all(z[~mask] == 0)
    # GroupNorm: a tile's embedding does not depend on the other tiles of the batch
    assert torch.allclose(m(x[0, :1]), m(x[0])[:1], atol=1e-5)


def test_read_tile_images_geometry_and_cache(pixel_workspace: Path) -> None:
    from histokd.data.tile_images import cache_bytes, clear_cache, read_tile_images
    from histokd.slides.reader import open_slide

    clear_cache()
    slide = next((pixel_workspace.parent / "data").glob("s1.tiff"))
    coords = np.array([[0, 0], [64, 32]], np.int64)
    a = read_tile_images(slide, coords, PATCH0, size=16)
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    with open_slide(slide) as s:  # the whole 32 px tile, squeezed to 16 px (4 µm/px)
        ref = s.read_region_mpp(64, 32, 16, PATCH0 * MPP0 / 16)
    assert np.array_equal(a[1], ref)
    assert cache_bytes() == a.nbytes
    assert read_tile_images(slide, coords, PATCH0, size=16) is a  # cached: same array
    clear_cache()
    assert cache_bytes() == 0


@pytest.mark.slow
def test_weno_end_to_end_trains_and_labels_from_pixels(pixel_workspace: Path) -> None:
    import histokd
    from histokd.methods.base import load_labeler
    from histokd.methods.weno import WenoPixelLabeler

    run = pixel_workspace
    out = histokd.train(run, features="noise", method="weno", seed=0,
                        overrides=["encoder=cnn", "tile_px=16", "epochs=8", "hpm_warmup=3", "encoder_dim=32",
                                   "student_hidden=[32]", "teacher_args={hidden: [32], attn_dim: 16}"])
    lab = load_labeler(out)
    assert isinstance(lab, WenoPixelLabeler)
    with pytest.raises(histokd.errors.InputError):  # pixels, not features
        lab.predict(np.zeros((3, 4), np.float32))
    res = histokd.label(run, model=out.name, n_boot=50)
    assert not res.failures
    test = res.metrics["splits"]["test"]
    # features are noise: only a model that learned from pixels can rank the tumour tiles first
    assert test["instance_from_probs"]["auc"] > 0.9
    with h5py.File(run / "predictions" / out.name / "s13.h5", "r") as f:
        probs = f["instance_probs"][()]
        assert probs.shape == ((SIZE0 // PATCH0) ** 2, 2)
        assert "mask" not in f
    # the label-time prediction equals predict() on the same tiles
    with h5py.File(run / "features" / "noise" / "s13.h5", "r") as f:
        coords = f["coords"][()]
    from histokd.data.tile_images import read_tile_images

    img = read_tile_images(run.parent / "data" / "s13.tiff", coords, PATCH0, 16)
    direct = lab.predict(img).instance_probs
    assert np.allclose(direct, probs, atol=1e-5)
    assert roc_auc_score(np.asarray(Image.open(run.parent / "data" / "s13_mask.png"))[::PATCH0, ::PATCH0].ravel() > 0,
                         probs[:, 1]) > 0.9


def test_end_to_end_defaults_fill_only_the_keys_left_unset() -> None:
    """Through the CLI / API path (``validate_config`` merges the method defaults in), the end-to-end
    defaults still apply to every key the user did not give, and never override one they did."""
    from histokd.config import validate_config
    from histokd.pipeline.train import build_config
    from histokd.methods.weno import Weno, WenoConfig, e2e_config

    cfg = build_config(Weno, None, ["encoder=cnn", "epochs=7"])
    assert cfg.model_fields_set == {"encoder", "epochs"}
    e2e = e2e_config(cfg)
    assert e2e.epochs == 7  # given
    assert (e2e.encoder_dim, e2e.max_bag_size, e2e.min_student_steps, e2e.standardize) == (128, 256, 0, False)
    e2e = e2e_config(validate_config(WenoConfig, {"encoder": "cnn", "encoder_dim": 32}))
    assert (e2e.encoder_dim, e2e.student_hidden) == (32, [128])
