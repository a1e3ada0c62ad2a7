from __future__ import annotations

import h5py
import numpy as np
import pytest

from histokd.errors import FeatureError
from histokd.features.store import FeatureWriter, feature_file_info, read_features, write_features


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    feats, coords = rng.normal(size=(7, 5)).astype(np.float32), rng.integers(0, 1000, (7, 2))
    p = write_features(tmp_path / "a.h5", feats, coords, {"encoder": "x", "target_mpp": 0.5})
    ff = read_features(p, expected_dim=5)
    np.testing.assert_array_equal(ff.features, feats)
    np.testing.assert_array_equal(ff.coords, coords)
    assert ff.attrs["encoder"] == "x" and ff.coords.dtype == np.int64 and len(ff) == 7


def test_streaming_writer_matches_and_is_atomic(tmp_path):
    rng = np.random.default_rng(1)
    feats, coords = rng.normal(size=(10, 3)).astype(np.float32), rng.integers(0, 99, (10, 2))
    path = tmp_path / "s.h5"
    with FeatureWriter(path, coords, 3, {"encoder": "e"}, chunk_rows=4) as w:
        w.write(0, feats[:4])
        assert not path.exists()  # only the temporary file until closed
        w.write(4, feats[4:])
    ff = read_features(path)
    np.testing.assert_array_equal(ff.features, feats)
    assert feature_file_info(path)[0] == (10, 3)


def test_incomplete_writer_leaves_nothing(tmp_path):
    path = tmp_path / "s.h5"
    w = FeatureWriter(path, np.zeros((4, 2)), 3)
    w.write(0, np.ones((2, 3)))
    with pytest.raises(FeatureError, match="only 2 of 4 rows"):
        w.close()
    assert not path.exists() and not list(tmp_path.glob(".*.tmp"))


def test_float16_storage(tmp_path):
    path = tmp_path / "h.h5"
    with FeatureWriter(path, np.zeros((2, 2)), 4, dtype="float16") as w:
        w.write(0, np.full((2, 4), 0.5))
    with h5py.File(path) as f:
        assert f["features"].dtype == np.float16
    assert read_features(path).features.dtype == np.float32


def test_corrupt_file_clear_error(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(FeatureError, match="cannot read feature file"):
        read_features(bad)
    assert feature_file_info(bad) is None


def test_wrong_dimension_clear_error(tmp_path):
    p = write_features(tmp_path / "a.h5", np.zeros((3, 8)), np.zeros((3, 2)))
    with pytest.raises(FeatureError, match="8-d but .* expects 16-d"):
        read_features(p, expected_dim=16)


def test_nan_refused(tmp_path):
    with pytest.raises(FeatureError, match="NaN"):
        write_features(tmp_path / "n.h5", np.array([[np.nan, 1.0]]), np.zeros((1, 2)))


def test_majority_dim_one_rule_for_every_feature_set():
    from histokd.errors import InputError
    from histokd.features.store import majority_dim

    names = {k: f"{k}.h5" for k in "abcd"}
    assert majority_dim({"a": 8, "b": 8, "c": 4}, "F", names, "fix") == 8  # one stray file does not decide
    assert majority_dim({}, "F", names, "fix") is None
    with pytest.raises(InputError, match=r"^F: feature files of different dimensions and no majority "
                                         r"\(8-d: a.h5, b.h5; 4-d: c.h5, d.h5\); fix$"):
        majority_dim({"a": 8, "b": 8, "c": 4, "d": 4}, "F", names, "fix")
