"""Formatting of metrics, metrics.json flattening, tiles.csv frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
from histokd.evaluate.binary import MetricRow
from histokd.outputs.tables import flatten_metrics, format_metric, tiles_frame


def test_format_metric():
    assert format_metric(MetricRow("AUC", float("nan"))) == "n/a"
    assert format_metric(MetricRow("AUC", 0.91234)) == "0.912"
    assert format_metric(MetricRow("AUC", 0.9, 0.8, 0.95)) == "0.900 [0.800, 0.950]"


def test_flatten_metrics_reads_common_ci_layouts():
    rows = dict(flatten_metrics({
        "test": {"auc": {"value": 0.9, "low": 0.8, "high": 0.95}, "f1": {"mean": 0.7, "ci": [0.6, 0.8]}},
        "n": 12, "curve": [0.1, 0.2],
    }))
    assert rows["test.auc"] == "0.9 [0.8, 0.95]"
    assert rows["test.f1"] == "0.7 [0.6, 0.8]"
    assert rows["n"] == "12" and rows["curve"] == "0.1, 0.2"


def test_tiles_frame():
    df = tiles_frame("s", np.array([[0, 0], [10, 20]]), np.array([[0.2, 0.8], [0.9, 0.1]]), ["n", "t"])
    assert list(df.columns) == ["slide_id", "x", "y", "prob_n", "prob_t"]
    assert df.loc[1, "y"] == 20 and df.loc[0, "prob_t"] == pytest.approx(0.8)
