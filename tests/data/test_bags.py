"""BagDataset: class order, collate masks, workspace loading with bad slides left out, instance labels."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from histokd.data.bags import (
    BagDataset,
    class_names,
    collate_bags,
    read_instance_labels,
    write_instance_labels,
)
from histokd.errors import FeatureError
from histokd.features.store import write_features
from histokd.workspace import Workspace


def test_class_order() -> None:
    assert class_names(["tumour", "normal", "tumour"]) == ["normal", "tumour"]
    assert class_names(["10", "2", "1"]) == ["1", "2", "10"]
    assert class_names(["luad", "lusc", "normal"]) == ["normal", "luad", "lusc"]


def test_collate_pads_with_mask() -> None:
    ds = BagDataset.from_arrays([np.ones((3, 4)), 2 * np.ones((5, 4))], ["tumour", "normal"],
                                instance_labels=[np.array([1, 0, 1]), None])
    b = collate_bags([ds[0], ds[1]])
    assert b.x.shape == (2, 5, 4)
    assert b.mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert b.x[0, 3:].abs().sum() == 0
    assert b.y.tolist() == [1, 0]
    assert b.instance_labels.tolist() == [[1, 0, 1, -1, -1], [-1] * 5]


def _ws(tmp_path, n_ok: int = 4):
    ws = Workspace(tmp_path / "run")
    rows = ["slide_id,path,label,split"]
    rng = np.random.default_rng(0)
    for i in range(n_ok):
        write_features(ws.features_h5("enc", f"s{i}"), rng.normal(size=(6 + i, 5)), np.zeros((6 + i, 2)))
        rows.append(f"s{i},x.tiff,{'tumour' if i % 2 else 'normal'},{'train' if i < 3 else 'val'}")
    return ws, rows


def test_from_workspace_leaves_out_bad_slides(tmp_path, caplog) -> None:
    ws, rows = _ws(tmp_path)
    import h5py

    rows.append("nofeat,x.tiff,tumour,train")  # no feature file
    write_features(ws.features_h5("enc", "orphan"), np.zeros((3, 5)), np.zeros((3, 2)))  # not in cohort
    write_features(ws.features_h5("enc", "wrongdim"), np.zeros((3, 7)), np.zeros((3, 2)))
    rows.append("wrongdim,x.tiff,normal,train")
    with h5py.File(ws.features_h5("enc", "empty"), "w") as f:
        f["features"] = np.zeros((0, 5), np.float32)
        f["coords"] = np.zeros((0, 2), np.int64)
    rows.append("empty,x.tiff,normal,train")
    with h5py.File(ws.features_h5("enc", "nan"), "w") as f:
        f["features"] = np.full((2, 5), np.nan, np.float32)
        f["coords"] = np.zeros((2, 2), np.int64)
    rows.append("nan,x.tiff,normal,train")
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="histokd"):
        ds = BagDataset.from_workspace(ws, "enc", tmp_path / "cohort.csv")
    assert ds.slide_ids == ["s0", "s1", "s2", "s3"]
    assert set(ds.skipped) == {"nofeat", "orphan", "wrongdim", "empty", "nan"}
    assert "wrongdim" in caplog.text and "7-d" in ds.skipped["wrongdim"]
    assert ds.classes == ["normal", "tumour"] and ds.labels.tolist() == [0, 1, 0, 1]
    assert len(ds.split("val")) == 1 and ds.dim == 5
    # unlabelled slides are kept when labels are not required (for `label`)
    ds2 = BagDataset.from_workspace(ws, "enc", tmp_path / "cohort.csv", require_labels=False, preload=False)
    assert "orphan" in ds2.slide_ids and ds2.records[ds2.slide_ids.index("orphan")].label == -1
    with pytest.raises(FeatureError, match="NaN"):
        ds2[ds2.slide_ids.index("nan")]


def test_instance_labels_are_read_beside_features(tmp_path) -> None:
    ws, rows = _ws(tmp_path, 2)
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    frac = np.array([0.0, 0.6, 0.5, 1.0, 0.2, 0.9], np.float32)
    write_instance_labels(ws.features_dir("enc") / "instance_labels" / "s0.h5", frac, 0.5)
    assert read_instance_labels(ws.features_dir("enc") / "instance_labels" / "s0.h5").tolist() == [0, 1, 0, 1, 0, 1]
    ds = BagDataset.from_workspace(ws, "enc", tmp_path / "cohort.csv")
    assert ds[0].instance_labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert ds[1].instance_labels is None and ds.has_instance_labels


def test_map_features_and_stats() -> None:
    ds = BagDataset.from_arrays([np.array([[0.0, 1.0], [2.0, 3.0]]), np.array([[4.0, 5.0]])], ["a", "b"])
    mean, std = ds.feature_stats()
    np.testing.assert_allclose(mean, [2.0, 3.0])
    np.testing.assert_allclose(std, np.sqrt([8 / 3, 8 / 3]), rtol=1e-6)
    z = ds.map_features(lambda f: (f - mean) / std)
    assert torch.allclose(z[1].features, torch.tensor([[2 / np.sqrt(8 / 3)] * 2], dtype=torch.float32))
