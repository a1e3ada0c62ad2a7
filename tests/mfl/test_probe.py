"""Linear probe on tile labels from masks: separable features score high, noise scores at chance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histokd.evaluate.probe import markdown_table
from histokd.pipeline.probe import linear_probe, probe_path
from histokd.features.store import write_features
from histokd.slides.tiling import read_tiles
from histokd.workspace import Workspace


def _write(ws: Workspace, name: str, informative: bool) -> None:
    rng = np.random.default_rng(0)
    for sid in ("s0", "s1", "s2"):
        grid = read_tiles(ws.tiles_h5(sid))
        x = rng.normal(size=(len(grid.coords), 8)).astype(np.float32)
        if informative:  # the tumour rectangle of the fixture: x in [96+64i, 288+64i), y in [64, 256)
            i = int(sid[1])
            cx, cy = grid.coords[:, 0] + 16, grid.coords[:, 1] + 16
            tum = (sid != "s1") & (cx >= 96 + 64 * i) & (cx < 288 + 64 * i) & (cy >= 64) & (cy < 256)
            x[:, 0] += 3.0 * tum
        write_features(ws.features_h5(name, sid), x, grid.coords,
                       {"encoder": name, "patch_size_level0": 32.0, "patch_size": 32, "target_mpp": 0.5})


def test_probe_separable_vs_noise(mfl_workspace):
    ws = Workspace(mfl_workspace)
    _write(ws, "good", True)
    _write(ws, "noise", False)
    good = linear_probe(ws, "good", seed=0)
    noise = linear_probe(ws, "noise", seed=0, C=1.0)
    assert good.train_slides == 2 and good.test_slides == 1  # s0, s1 train; s2 test
    assert good.pos_test > 10 and good.n_test == 192
    assert good.auc > 0.95 and good.balanced_accuracy > 0.9
    assert good.balanced_accuracy_ci95[0] <= good.balanced_accuracy <= good.balanced_accuracy_ci95[1]
    assert 0.3 < noise.auc < 0.7
    saved = json.loads(probe_path(ws, "good").read_text())
    assert saved["auc"] == pytest.approx(good.auc)
    again = linear_probe(ws, "good", seed=0, write=False)
    assert again.auc == good.auc and again.auc_ci95 == good.auc_ci95  # deterministic
    assert good.auc_ci95[0] <= good.auc <= good.auc_ci95[1]


def test_probe_needs_features(mfl_workspace):
    with pytest.raises(Exception, match="histokd embed"):
        linear_probe(mfl_workspace, "missing-encoder")


def test_markdown_table():
    t = markdown_table([{"a": "x", "b": 0.12345}, {"a": "y", "b": float("nan")}], [("a", "A"), ("b", "B")])
    assert t.splitlines() == ["| A | B |", "|---|---|", "| x | 0.123 |", "| y | n/a |"]


def test_best_threshold_maximises_balanced_accuracy():
    from sklearn.metrics import balanced_accuracy_score

    from histokd.evaluate.probe import best_threshold

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(500), np.ones(20)].astype(int)
    p = np.r_[rng.uniform(0.0, 0.3, 500), rng.uniform(0.2, 0.4, 20)]  # all far below 0.5
    t = best_threshold(y, p)
    assert 0.2 < t < 0.4
    assert balanced_accuracy_score(y, p >= t) > 0.75
    assert balanced_accuracy_score(y, p >= 0.5) == 0.5  # the fixed threshold says nothing here


def test_out_of_fold_scores_held_out_slides():
    from histokd.evaluate.probe import out_of_fold

    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(6), 50)
    y = ((groups % 2 == 0) & (rng.random(300) < 0.3)).astype(int)  # tumour tiles only on even slides
    # a slide-specific feature: a probe that could see the scored slide would use it
    x = np.c_[rng.normal(size=(300, 2)) + 2.0 * y[:, None], np.eye(6)[groups] * 5]
    oof = out_of_fold(x, y, groups, C=1.0, seed=0, folds=3)
    assert np.isfinite(oof).mean() > 0.5
    ok = np.isfinite(oof)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[ok], oof[ok]) > 0.8
