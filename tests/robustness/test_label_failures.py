"""``histokd label``: no silent drops, right totals, one line for a model/feature mismatch (issue 16)."""

from __future__ import annotations

import h5py
import numpy as np
from badinput import TILE_ARGS, cli, cohort_rows, write_cohort

from histokd.workspace import read_csv, write_frame_csv


def _trained(tmp_path, slide_files):
    co = write_cohort(tmp_path / "a.csv", cohort_rows(slide_files), tissue_png=slide_files.tissue_png)
    run = tmp_path / "run"
    assert cli("tile", co, "-w", run, *TILE_ARGS).exit_code == 0
    assert cli("embed", "-w", run, "-e", "handcrafted", "-j", "0").exit_code == 0
    assert cli("train", "-w", run, "--method", "abmil", "--model-id", "m", "--max-epochs", "2").exit_code == 0
    return run


def _rewrite(path, features):
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("coords", data=np.zeros((len(features), 2), np.int64))
        f.attrs.update(attrs)


def test_label_failures_are_counted_once_and_unknown_labels_still_predicted(tmp_path, slide_files):
    run = _trained(tmp_path, slide_files)
    fdir = run / "features" / "handcrafted"
    _rewrite(fdir / "n3.h5", np.zeros((0, 55), np.float32))  # an empty bag
    df = read_csv(run / "cohort.csv")
    df.loc[df["slide_id"] == "t3", "label"] = "lymphoma"  # a class the model never saw
    write_frame_csv(run / "cohort.csv", df)
    r = cli("label", "-w", run, "--model", "m")
    assert r.exit_code == 1
    assert "1 of 8 slides failed" in r.output and "n3" in r.output and "empty bag" in r.output
    assert (run / "predictions" / "m" / "t3.h5").exists()  # predicted, not dropped
    assert not (run / "predictions" / "m" / "n3.h5").exists()


def test_label_features_of_another_dimension_is_one_line(tmp_path, slide_files):
    run = _trained(tmp_path, slide_files)
    fdir = run / "features" / "handcrafted"
    for p in fdir.glob("*.h5"):  # re-embedded with another encoder under the same name
        _rewrite(p, np.random.default_rng(0).normal(size=(16, 12)).astype(np.float32))
    r = cli("label", "-w", run, "--model", "m")
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert "features/handcrafted: features are 12-d but model 'm' was trained on 55-d" in line and "retrain" in line


def test_a_model_retrained_under_its_id_is_not_served_stale_predictions(tmp_path, slide_files):
    import h5py as h5

    run = _trained(tmp_path, slide_files)
    assert cli("label", "-w", run, "--model", "m").exit_code == 0
    pred = run / "predictions" / "m" / "n0.h5"
    with h5.File(pred) as f:
        first_key, first = f.attrs["source_key"], f["instance_probs"][()]
    assert cli("label", "-w", run, "--model", "m").exit_code == 0  # resume: same model, same features
    with h5.File(pred) as f:
        assert f.attrs["source_key"] == first_key
    assert cli("train", "-w", run, "--method", "abmil", "--model-id", "m", "--max-epochs", "2", "--seed", "7",
               "--overwrite").exit_code == 0
    assert cli("label", "-w", run, "--model", "m").exit_code == 0  # no --overwrite: still predicted again
    with h5.File(pred) as f:
        assert f.attrs["source_key"] != first_key and not np.array_equal(f["instance_probs"][()], first)


def test_train_on_one_class_names_the_cohort_and_the_class(tmp_path, slide_files):
    rows = [r if r[3] != "train" or r[2] == "normal" else [r[0], r[1], r[2], "test"] for r in cohort_rows(slide_files)]
    co = write_cohort(tmp_path / "a.csv", rows, tissue_png=slide_files.tissue_png)
    run = tmp_path / "run"
    assert cli("tile", co, "-w", run, *TILE_ARGS).exit_code == 0
    assert cli("embed", "-w", run, "-e", "handcrafted", "-j", "0").exit_code == 0
    r = cli("train", "-w", run, "--method", "abmil", "--max-epochs", "1")
    assert r.exit_code == 2
    assert "cohort.csv: the training split has 2 slide(s), all of class 'normal'" in r.output
