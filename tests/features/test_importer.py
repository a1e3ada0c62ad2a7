from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from histokd.errors import InputError
from histokd.features.importer import import_features
from histokd.features.store import read_features
from histokd.workspace import Workspace


def _clam(root, rng, n_slides=2, dim=16):
    (root / "h5_files").mkdir(parents=True)
    (root / "pt_files").mkdir()
    truth = {}
    for i in range(n_slides):
        n = 5 + i
        feats = rng.normal(size=(n, dim)).astype(np.float32)
        coords = rng.integers(0, 5000, (n, 2))
        with h5py.File(root / "h5_files" / f"slide{i}.h5", "w") as f:
            f.create_dataset("features", data=feats)
            d = f.create_dataset("coords", data=coords)
            d.attrs["patch_size"] = 256
            d.attrs["patch_level"] = 0
        torch.save(torch.from_numpy(feats), root / "pt_files" / f"slide{i}.pt")
        truth[f"slide{i}"] = (feats, coords)
    # a slide with only a .pt file (CLAM's pt_files without h5)
    truth["ptonly"] = (rng.normal(size=(3, dim)).astype(np.float32), np.zeros((3, 2), np.int64))
    torch.save(torch.from_numpy(truth["ptonly"][0]), root / "pt_files" / "ptonly.pt")
    return truth


def test_clam_folder_imports(tmp_path):
    rng = np.random.default_rng(0)
    truth = _clam(tmp_path / "clam", rng)
    ws = Workspace(tmp_path / "run")
    res = import_features(tmp_path / "clam", ws, "uni", format="auto")
    assert res.format == "clam" and res.dim == 16 and sorted(res.imported) == sorted(truth) and not res.failed
    for sid, (feats, coords) in truth.items():
        ff = read_features(ws.features_h5("uni", sid), expected_dim=16)
        np.testing.assert_allclose(ff.features, feats)
        np.testing.assert_array_equal(ff.coords, coords)
        assert ff.attrs["encoder"] == "uni" and ff.attrs["import_format"] == "clam"
    assert read_features(ws.features_h5("uni", "slide0")).attrs["patch_size"] == 256
    with pytest.raises(InputError):  # already there
        import_features(tmp_path / "clam", ws, "uni")
    res = import_features(tmp_path / "clam", ws, "uni", overwrite=True)
    assert len(res.imported) == 3


def test_pt_coords_taken_from_matching_tile_grid(tmp_path):
    rng = np.random.default_rng(1)
    _clam(tmp_path / "clam", rng, n_slides=0)
    ws = Workspace(tmp_path / "run")
    ws.tiles_dir.mkdir(parents=True)
    with h5py.File(ws.tiles_h5("ptonly"), "w") as f:
        f.create_dataset("coords", data=np.array([[0, 0], [64, 0], [0, 64]]))
    import_features(tmp_path / "clam", ws, "x", format="clam")
    np.testing.assert_array_equal(read_features(ws.features_h5("x", "ptonly")).coords[1], [64, 0])


def test_trident_nested_folder_with_batch_axis(tmp_path):
    rng = np.random.default_rng(2)
    d = tmp_path / "trident" / "20x_256px_0px_overlap" / "features_conch_v15"
    d.mkdir(parents=True)
    feats = rng.normal(size=(1, 4, 8)).astype(np.float32)  # TRIDENT may keep a leading batch axis
    with h5py.File(d / "TCGA-01.h5", "w") as f:
        f.create_dataset("features", data=feats)
        c = f.create_dataset("coords", data=rng.integers(0, 100, (4, 2)))
        c.attrs["patch_size_level0"] = 512
        f.attrs["encoder"] = "conch_v15"
    ws = Workspace(tmp_path / "run")
    res = import_features(tmp_path / "trident", ws, "conch")
    assert res.format == "trident" and res.imported == ["TCGA-01"]
    ff = read_features(ws.features_h5("conch", "TCGA-01"))
    np.testing.assert_allclose(ff.features, feats[0])
    assert ff.attrs["patch_size_level0"] == 512 and ff.attrs["source_encoder"] == "conch_v15"


def test_bad_files_are_reported_and_others_kept(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    with h5py.File(src / "good.h5", "w") as f:
        f.create_dataset("features", data=np.ones((3, 8), np.float32))
        f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
    with h5py.File(src / "wrongdim.h5", "w") as f:
        f.create_dataset("features", data=np.ones((3, 5), np.float32))
        f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
    (src / "corrupt.h5").write_bytes(b"\x89HDF\r\n truncated")
    res = import_features(src, Workspace(tmp_path / "run"), "mine")
    assert "good" in res.imported
    assert "cannot read feature file" in res.failed["corrupt"]
    assert "5-d" in res.failed["wrongdim"] or "8-d" in res.failed.get("good", "")


def test_empty_or_missing_source(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        import_features(tmp_path / "nope", tmp_path / "run", "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no feature files"):
        import_features(tmp_path / "empty", tmp_path / "run", "x")
    with pytest.raises(InputError, match="--name"):
        import_features(tmp_path / "empty", tmp_path / "run", "a/b")
