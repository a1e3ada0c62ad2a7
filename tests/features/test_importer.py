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


def _h5(path, n, dim):
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.ones((n, dim), np.float32))
        f.create_dataset("coords", data=np.zeros((n, 2), np.int64))


def test_bad_files_are_reported_and_others_kept(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    _h5(src / "good.h5", 3, 8)
    _h5(src / "good2.h5", 4, 8)
    _h5(src / "wrongdim.h5", 3, 5)
    (src / "corrupt.h5").write_bytes(b"\x89HDF\r\n truncated")
    res = import_features(src, Workspace(tmp_path / "run"), "mine")
    assert sorted(res.imported) == ["good", "good2"] and res.dim == 8
    assert "cannot read feature file" in res.failed["corrupt"]
    assert res.failed["wrongdim"] == (
        f"{src / 'wrongdim.h5'}: features are 5-d but 2 of the 3 readable files in {src} are 8-d (another "
        f"encoder?); re-extract this slide with the encoder of the others, or import it under its own --name")


def test_one_bad_file_does_not_reject_nine_good_ones(tmp_path):
    """Issue 16: the alphabetically first file used to decide the dimension, so one stray file rejected
    the nine good ones."""
    src = tmp_path / "clam" / "h5_files"
    src.mkdir(parents=True)
    _h5(src / "a_stray.h5", 5, 384)  # sorts first
    for i in range(9):
        _h5(src / f"slide{i}.h5", 4 + i, 1280)
    ws = Workspace(tmp_path / "run")
    res = import_features(tmp_path / "clam", ws, "effnet")
    assert res.dim == 1280 and sorted(res.imported) == [f"slide{i}" for i in range(9)]
    assert list(res.failed) == ["a_stray"] and "features are 384-d but 9 of the 10 readable files" in res.failed["a_stray"]
    assert read_features(ws.features_h5("effnet", "slide3"), expected_dim=1280).features.shape == (7, 1280)
    assert not ws.features_h5("effnet", "a_stray").exists()


def test_a_tie_between_dimensions_is_refused_listing_them(tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    for stem, dim in [("a", 768), ("b", 768), ("c", 1024), ("d", 1024), ("e", 512)]:
        _h5(src / f"{stem}.h5", 3, dim)
    (src / "broken.h5").write_bytes(b"not hdf5")  # unreadable files do not vote
    with pytest.raises(InputError) as e:
        import_features(src, Workspace(tmp_path / "run"), "x")
    assert str(e.value) == (
        f"{src}: feature files of different dimensions and no majority (768-d: a.h5, b.h5; 1024-d: c.h5, d.h5; "
        f"512-d: e.h5); keep the files of one encoder in the folder, or import each set under its own --name")
    assert not list((tmp_path / "run" / "features").rglob("*.h5"))  # nothing imported (the folder's lock file aside)


def test_cli_lists_the_odd_file_as_failed(tmp_path):
    from typer.testing import CliRunner

    from histokd.cli import app

    src = tmp_path / "flat"
    src.mkdir()
    _h5(src / "a_stray.h5", 2, 16)
    for i in range(3):
        _h5(src / f"s{i}.h5", 3, 32)
    r = CliRunner().invoke(app, ["import-features", str(src), "-w", str(tmp_path / "run"), "--name", "f"])
    out = "".join(r.output.split())
    assert r.exit_code == 1, r.output
    assert "3clamfile(s)imported,32-d;1failed" in out
    assert "".join(f"{src / 'a_stray.h5'}: features are 16-d but 3 of the 4 readable files".split()) in out


def test_empty_or_missing_source(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        import_features(tmp_path / "nope", tmp_path / "run", "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no feature files"):
        import_features(tmp_path / "empty", tmp_path / "run", "x")
    with pytest.raises(InputError, match="--name"):
        import_features(tmp_path / "empty", tmp_path / "run", "a/b")
