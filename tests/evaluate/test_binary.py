"""Binary metrics of a report with (cluster) bootstrap CIs: histokd.evaluate.binary."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from histokd.evaluate.binary import BINARY_METRICS, binary_metrics, confusion_matrix


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) * 0.6 + 0.4 * y, 2)  # rounded: many ties
    assert BINARY_METRICS["AUC"](y, s, 0.5) == pytest.approx(roc_auc_score(y, s))
    assert BINARY_METRICS["average precision"](y, s, 0.5) == pytest.approx(average_precision_score(y, s))
    assert BINARY_METRICS["F1"](y, s, 0.5) == pytest.approx(f1_score(y, s >= 0.5))


def test_bootstrap_ci_brackets_the_value_and_shrinks_with_n():
    rng = np.random.default_rng(0)

    def rows(n):
        y = rng.integers(0, 2, n)
        s = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
        return {r.name: r for r in binary_metrics(y, s, n_boot=300, seed=0)}

    small, large = rows(40), rows(2000)
    for r in small.values():
        assert r.low <= r.value <= r.high
    assert (large["AUC"].high - large["AUC"].low) < (small["AUC"].high - small["AUC"].low) / 3


def test_cluster_bootstrap_is_wider_than_tile_bootstrap():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(8), 50)
    shift = rng.normal(0, 0.3, 8)[groups]  # slide effect: tiles of a slide are correlated
    y = (rng.random(400) < 0.4).astype(int)
    s = 0.25 * y + rng.random(400) * 0.5 + shift
    tiles = binary_metrics(y, s, n_boot=300, names=["AUC"])[0]
    slides = binary_metrics(y, s, groups=groups, n_boot=300, names=["AUC"])[0]
    assert slides.value == tiles.value
    assert slides.high - slides.low > tiles.high - tiles.low


def test_single_class_gives_nan_auc_not_an_error():
    r = binary_metrics(np.ones(10), np.linspace(0, 1, 10), n_boot=50, names=["AUC", "accuracy"])
    assert math.isnan(r[0].value) and not np.isfinite(r[0].low)
    assert r[1].value == pytest.approx(0.5)


def test_confusion_matrix():
    cm = confusion_matrix(["a", "b", "b", "x"], ["a", "a", "b", "a"], ["a", "b"])
    assert cm.tolist() == [[1, 0], [1, 1]]
