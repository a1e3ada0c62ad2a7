"""``histokd predict`` (issue 17): a bundle on new, unlabelled slides; per-patient aggregation; the
out-of-distribution flag; labels optional; resume and per-slide failures."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from predict_slides import TILE_ARGS, cli, write_cohort, write_slide

from histokd.features.ood import fit_ood, ood_score
from histokd.workspace import read_csv


@pytest.fixture(scope="module")
def new_slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("new_slides")
    return {
        "a1": write_slide(root / "a1.tif", 500, False),
        "a2": write_slide(root / "a2.tif", 501, True),
        "b1": write_slide(root / "b1.tif", 502, False),
        "b2": write_slide(root / "b2.tif", 503, True),
        "stained": write_slide(root / "stained.tif", 504, True, stain="hue"),  # another stain
    }


def test_predict_an_unlabelled_cohort_from_the_cli(bundle_dir: Path, new_slides: dict[str, Path], tmp_path: Path):
    patients = {"a1": "p1", "a2": "p1", "b1": "p2", "b2": "p3", "stained": "p4"}
    rows = [[sid, str(p), patients[sid]] for sid, p in new_slides.items()]
    rows.append(["gone", str(tmp_path / "missing.svs"), "p4"])  # a bad slide fails alone
    co = write_cohort(tmp_path / "new.csv", rows, ["slide_id", "path", "patient_id"])  # no label column
    out = tmp_path / "out"
    r = cli("predict", "--model", bundle_dir, "--slides", co, "-w", out, "-j", "1", "--bootstrap", "20")
    assert r.exit_code == 1, r.output
    assert "5 of 6 slide(s) predicted, 1 out of distribution" in r.output
    assert "no labels: no metrics" in r.output
    assert "1 of 6 slides failed:" in r.output and "gone:" in r.output and "slide file not found" in r.output

    pdir = out / "predictions" / "m"
    df = read_csv(pdir / "slides.csv").set_index("slide_id")
    assert list(df.columns) == ["patient_id", "pred", "prob_normal", "prob_tumour", "threshold", "call",
                                "ood_feature_score", "ood_feature_threshold", "ood_colour_score",
                                "ood_colour_threshold", "ood"]
    assert sorted(df.index) == ["a1", "a2", "b1", "b2", "stained"]
    p = df["prob_tumour"].astype(float)
    assert p["a2"] > p["a1"] and p["b2"] > p["b1"]  # tumour slides score higher
    thr = float(df["threshold"].iloc[0])
    assert all(df.at[s, "call"] == ("tumour" if p[s] >= thr else "normal") for s in df.index)
    # the out-of-distribution flag: the slide of another stain, and only it
    assert df["ood"].to_dict() == {"a1": "0", "a2": "0", "b1": "0", "b2": "0", "stained": "1"}
    for what in ("feature", "colour"):  # each measure on its own flags it
        score = df[f"ood_{what}_score"].astype(float)
        assert score["stained"] > float(df[f"ood_{what}_threshold"].iloc[0]) > score.drop("stained").max()

    # per patient: the max of its slides' probabilities
    pat = read_csv(pdir / "patients.csv").set_index("patient_id")
    assert list(pat.columns) == ["n_slides", "slides", "prob_tumour_max", "threshold", "call", "ood_any"]
    assert pat.at["p1", "slides"] == "a1;a2" and pat.at["p1", "n_slides"] == "2"
    assert float(pat.at["p1", "prob_tumour_max"]) == pytest.approx(max(p["a1"], p["a2"]), abs=1e-6)
    assert pat.at["p4", "ood_any"] == "1" and pat.at["p2", "ood_any"] == "0"

    html = (out / "reports" / "m" / "index.html").read_text()
    assert "no labels: no metrics" in html and "out of distribution: do not trust this prediction" in html
    assert "nan" not in re.sub(r"data:[^\"]+", "", html).lower()  # no NaN metric anywhere (images aside)
    assert (out / "reports" / "m" / "heatmaps" / "a2.png").is_file()
    assert (out / "tiles" / "a1.h5").is_file() and (out / "features" / "handcrafted" / "a1.h5").is_file()

    # resume: the same command again does no work and gives the same table
    before = (pdir / "slides.csv").read_text()
    mtime = (out / "features" / "handcrafted" / "a1.h5").stat().st_mtime_ns
    r2 = cli("predict", "--model", bundle_dir, "--slides", co, "-w", out, "-j", "1", "--bootstrap", "20")
    assert r2.exit_code == 1 and "1 of 6 slides failed:" in r2.output
    assert (pdir / "slides.csv").read_text() == before
    assert (out / "features" / "handcrafted" / "a1.h5").stat().st_mtime_ns == mtime


def test_predict_on_a_folder_and_on_labelled_slides(bundle_dir: Path, new_slides: dict[str, Path], tmp_path: Path):
    from histokd import predict

    folder = tmp_path / "folder"
    folder.mkdir()
    for sid in ("a1", "b2"):
        (folder / f"{sid} scan.tif").symlink_to(new_slides[sid])
    (folder / "notes.txt").write_text("not a slide")
    res = predict(bundle_dir, folder, tmp_path / "out_folder", workers=1, n_boot=10, report=False)
    assert not res.failures and res.n_predicted == 2 and res.patients_csv is None and res.report is None
    assert sorted(read_csv(res.slides_csv)["slide_id"]) == ["a1_scan", "b2_scan"]
    # a labelled cohort: metrics, and a label column in slides.csv
    rows = [[sid, str(new_slides[sid]), lab] for sid, lab in (("a1", "normal"), ("a2", "tumour"), ("b1", "normal"),
                                                               ("b2", "tumour"))]
    co = write_cohort(tmp_path / "lab.csv", rows, ["slide_id", "path", "label"])
    res = predict(bundle_dir, co, tmp_path / "out_lab", workers=1, n_boot=10)
    assert res.labelled and res.metrics["splits"]["all"]["n_bags"] == 4
    assert res.metrics["splits"]["all"]["auc"]["value"] == pytest.approx(1.0)
    assert list(read_csv(res.slides_csv)["label"]) == ["normal", "tumour", "normal", "tumour"]
    assert "no labels: no metrics" not in res.report.read_text()


def test_bad_slides_argument_is_one_line(bundle_dir: Path, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("predict", "--model", bundle_dir, "--slides", empty, "-w", tmp_path / "out")
    assert r.exit_code == 2 and "no slide files" in r.output
    r = cli("predict", "--model", tmp_path / "nothere", "--slides", empty, "-w", tmp_path / "out")
    assert r.exit_code == 2 and "no such model folder or archive" in r.output


def test_train_refuses_an_unlabelled_cohort_with_one_line(new_slides: dict[str, Path], tmp_path: Path):
    co = write_cohort(tmp_path / "c.csv", [[sid, str(p)] for sid, p in new_slides.items()], ["slide_id", "path"])
    run = tmp_path / "run"
    assert cli("tile", co, "-w", run, *TILE_ARGS).exit_code == 0
    assert cli("embed", "-w", run, "-e", "handcrafted", "-j", "0").exit_code == 0
    r = cli("train", "-w", run, "--method", "abmil", "--max-epochs", "1")
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith(f"error: {run / 'cohort.csv'}: no slide has a label")


def test_ood_measure():
    rng = np.random.default_rng(0)
    train = [rng.normal(0, 1, 16) for _ in range(20)]
    summary = fit_ood(train)
    assert summary["n_slides"] == 20 and summary["quantile"] == 0.99
    loo = summary["train_scores"]
    assert summary["threshold"] >= loo["mean"] + 3 * loo["sd"] - 1e-9 and summary["threshold"] > loo["median"]
    assert ood_score(summary, rng.normal(0, 1, 16))[0] < 2.0
    score, flag = ood_score(summary, rng.normal(0, 1, 16) + 5.0)
    assert flag and score > 3 * summary["threshold"]
    assert fit_ood(train[:3]) is None  # too few training slides for a summary
