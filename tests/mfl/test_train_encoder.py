"""``train_encoder`` end to end on a tiny tiled workspace: paired tiles -> trained folder -> mfl: embed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from histokd.data.paired import load_paired_tiles, sample_locations
from histokd.errors import InputError
from histokd.pipeline.probe import compare_encoders
from histokd.features.encoders import build_encoder
from histokd.pipeline.train_encoder import train_encoder
from histokd.workspace import Workspace

KW = dict(epochs=1, batch_size=16, tile_size=16, max_tiles=32, seed=3, proj_hidden=32, proj_dim=32,
          show_progress=False, threads=1)


def test_locations_are_seeded_and_train_split_only(mfl_workspace):
    ws = Workspace(mfl_workspace)
    _, a = sample_locations(ws, 16, 1.0, 50, seed=0)
    _, b = sample_locations(ws, 16, 1.0, 50, seed=0)
    assert [s for s, _ in a] == ["s0", "s1"]  # s2 is a test slide
    assert sum(len(c) for _, c in a) == 50
    for (_, ca), (_, cb) in zip(a, b):
        np.testing.assert_array_equal(ca, cb)
    # 16 px at 1 µm/px = 32 level-0 px: the same as the grid tile, so no offset
    grid_x = set(range(0, 512, 32))
    assert all(int(x) in grid_x for _, c in a for x in c[:, 0])


def test_paired_tiles_are_aligned_in_the_workspace(mfl_workspace):
    tiles = load_paired_tiles(Workspace(mfl_workspace), 16, 1.0, 400, seed=0, show_progress=False)
    assert tiles.he.shape[1:] == (16, 16, 3) and tiles.dense.shape[1:] == (16, 16, 4)
    # tumour pixels are dark in H&E exactly where the marker channel is bright
    dark = tiles.he[..., 1] < 140
    bright = tiles.dense[..., 1] > 120
    assert dark.sum() > 100
    assert (dark == bright).mean() > 0.98


@pytest.mark.slow
def test_train_encoder_end_to_end(mfl_workspace):
    provs = {}
    for method in ("more-from-less", "ssl-he"):
        out = train_encoder(mfl_workspace, method=method, encoder_id=f"t-{method}", **KW)
        assert out == mfl_workspace / "encoders" / f"t-{method}"
        doc = yaml.safe_load((out / "config.yaml").read_text())
        assert doc["encoder"]["mpp"] == pytest.approx(1.0)  # 16 px covering the 16 µm grid tile
        provs[method] = prov = json.loads((out / "provenance.json").read_text())
        assert prov["n_tiles"] == 32 and prov["slides"] == ["s0", "s1"]
        enc = build_encoder(f"mfl:{out}")
        imgs = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
        assert enc.encode(imgs).shape == (3, enc.dim)
    # equal budget: the control saw exactly the tiles the cross-modal encoder saw
    assert provs["more-from-less"]["tiles_hash"] == provs["ssl-he"]["tiles_hash"]
    with pytest.raises(InputError, match="exists"):
        train_encoder(mfl_workspace, method="ssl-he", encoder_id="t-ssl-he", **KW)
    # the trained encoder goes through `histokd embed` and the probe (the comparison table, probe only)
    specs = [f"mfl:{mfl_workspace / 'encoders' / f't-{m}'}" for m in ("more-from-less", "ssl-he")]
    rows, table = compare_encoders(mfl_workspace, specs, mil_method=None, embed_kwargs={"workers": 0, "threads": 1})
    assert [r["encoder"] for r in rows] == specs
    assert all(0.0 <= r["probe_auc"] <= 1.0 and r["dim"] == 128 for r in rows)
    assert table.count("\n") == 4 and (mfl_workspace / "probes" / "comparison.md").exists()


def test_bad_options(mfl_workspace):
    with pytest.raises(InputError, match="unknown encoder method"):
        train_encoder(mfl_workspace, method="simclr", **KW)
    with pytest.raises(InputError):
        train_encoder(mfl_workspace, method="ssl-he", loss="nope", **KW)
