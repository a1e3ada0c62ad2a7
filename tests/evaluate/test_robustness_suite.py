"""The robustness suite (benchmarks/robustness.py) in its CI size: two tiny cohorts end to end, the table,
the criteria and the picture, and a second run that resumes from what the first wrote."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "robustness.py"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _suite():
    return _load(SCRIPT, "robustness_suite")


def test_families_fix_their_seeds_and_keep_tuning_apart():
    common, fams = _suite().family_specs(False)
    assert {"small", "burden", "lookalike", "site", "artefact", "tinyval"} <= set(fams)
    for name, f in fams.items():
        assert f["tuning"] and len(f["evaluation"]) >= 3, name
        assert not set(f["tuning"]) & set(f["evaluation"]), name  # no cohort is both tuned and evaluated on
        # round 2: fresh seeds, several tuning cohorts, none shared with any other list
        assert len(f["tuning2"]) >= 3 and len(f["evaluation2"]) >= 3, name
        lists = [f["tuning"], f["evaluation"], f["tuning2"], f["evaluation2"], f["evaluation3"]]
        assert len({s for lst in lists for s in lst}) == sum(len(lst) for lst in lists), name


def test_cohort_scores_bootstrap_by_slide_and_count_collapse():
    R = _suite()
    folds = []
    for k in range(2):
        folds.append({"auc": 1.0, "balanced_accuracy": 0.5, "predictions": {
            "bag_ids": [f"s{k}{i}" for i in range(4)], "labels": [0, 0, 1, 1],
            "bag_probs": [0.6, 0.7, 0.9, 0.95], "decision": {"threshold": 0.5},
            "tile_bag": [0, 0, 1, 1, 2, 2, 3, 3], "tile_labels": [0, 0, 0, 0, 1, 0, 1, 1],
            "tile_probs": [0.1, 0.2, 0.1, 0.3, 0.9, 0.2, 0.8, 0.7],
            "tile_teacher_probs": [0.9, 0.2, 0.1, 0.3, 0.5, 0.2, 0.8, 0.7]}})
    res = {"methods": {"m": {"folds": folds}}}
    s = R.cohort_scores(R.pooled(res, "m"), n_boot=200)
    assert s["bag_auc"]["value"] == 1.0
    assert s["collapsed_folds"] == 2 and s["collapsed_where_auc_075"] == 2  # every slide called tumour
    assert s["tile_auc_probs"]["low"] <= s["tile_auc_probs"]["value"] <= s["tile_auc_probs"]["high"]
    assert s["tile_auc_probs"]["value"] == 1.0 and s["tile_auc_teacher_probs"]["value"] < 1.0  # kept apart
    # the student is held against its teacher's per-tile probabilities too
    better_teacher = {"tile_auc_probs": {"value": 0.80}, "tile_auc_scores": {"value": 0.70},
                      "tile_auc_teacher_probs": {"value": 0.90}, "bag_auc": {"value": 0.8}}
    abmil = {"tile_auc_probs": {"value": 0.75}, "tile_auc_scores": {"value": 0.6}, "bag_auc": {"value": 0.8}}
    lines = R.criteria("fam", {"1": {"weno": better_teacher, "abmil": abmil}})
    assert any("weno student tile AUC minus best reference: median -0.100" in line for line in lines)
    # the same outputs with a fitted cut of 0.8: no collapse
    for f in folds:
        f["predictions"]["decision"] = {"threshold": 0.8}
        f["predictions"]["bag_probs"] = [0.27, 0.37, 0.69, 0.83]  # shifted by logit(0.8)
    s = R.cohort_scores(R.pooled(res, "m"), n_boot=0)
    assert s["collapsed_folds"] == 0 and s["collapsed_folds_fixed"] == 2


@pytest.mark.slow
def test_smoke_suite_runs_and_resumes(tmp_path: Path, capsys):
    R = _suite()
    assert R.main(["--root", str(tmp_path), "--smoke", "--n-boot", "50"]) == 0
    out = capsys.readouterr().out
    assert "| small | abmil |" in out and "| tinyval | weno |" in out
    res = tmp_path / "results" / "defaults"
    assert (res / "evaluation.md").is_file() and (res / "evaluation.png").stat().st_size > 1000
    files = sorted(res.glob("*/*/*.json"))
    assert len(files) == 4
    stamp = {f: f.stat().st_mtime_ns for f in files}
    scores = json.loads((res / "evaluation.json").read_text())
    assert np.isfinite(scores["small"]["9001"]["abmil"]["bag_auc"]["value"])
    # a distilled method's teacher is kept per tile, so the criteria hold the student against it too
    assert np.isfinite(scores["small"]["9001"]["weno"]["tile_auc_teacher_probs"]["value"])
    assert "tile_auc_teacher_probs" not in scores["small"]["9001"]["abmil"]
    weno = json.loads((res / "small" / "9001" / "weno.json").read_text())
    assert weno["methods"]["weno"]["folds"][0]["predictions"]["tile_score"] == "student"  # the rule used
    assert "tile_auc_blend" in scores["small"]["9001"]["weno"]
    assert R.main(["--root", str(tmp_path), "--smoke", "--n-boot", "50"]) == 0  # resumes: nothing re-run
    assert {f: f.stat().st_mtime_ns for f in files} == stamp
    # every fold kept the scores its slide cut was chosen from, so the cut and slide-score rules compare offline
    cal = weno["methods"]["weno"]["folds"][0]["predictions"]["decision"]["calibration"]
    assert set(cal) == {"validation_positive", "validation_negative", "training_positive", "training_negative"}
    capsys.readouterr()
    rules = _load(SCRIPT.with_name("robustness_rules.py"), "robustness_rules")
    assert rules.main(["--root", str(tmp_path), "--tag", "defaults", "--smoke"]) == 0
    out = capsys.readouterr().out
    n_folds = int(out.split("Slide cut rules over ")[1].split()[0])
    every = sum(len(json.loads(f.read_text())["methods"][f.stem]["folds"]) for f in files)
    assert n_folds == every > 0  # every fold of every result kept its calibration scores
    assert "| histokd now (validation medians, else training medians, else 0.5) |" in out
    weno_table = out.split("weno: median-cohort bag AUC")[1].split("distill-to-label:")[0]
    assert "| small | 1 |" in weno_table and "| tinyval | 1 |" in weno_table  # one cohort each, beside ABMIL
    assert rules._repeats_of(Path("weno.r10.json")) == 10 and rules._repeats_of(Path("weno.json")) == 1


def test_repeats_average_per_repeat_scores_and_resample_slides_once():
    R = _suite()

    def fold(rep, k, probs, tiles):
        return {"repeat": rep, "auc": 1.0, "balanced_accuracy": 0.5, "predictions": {
            "bag_ids": [f"s{k}{i}" for i in range(4)], "labels": [0, 0, 1, 1], "bag_probs": probs,
            "decision": {"threshold": 0.5}, "tile_bag": [0, 0, 1, 1, 2, 2, 3, 3],
            "tile_labels": [0, 0, 0, 0, 1, 0, 1, 1], "tile_probs": tiles}}

    good = [0.1, 0.2, 0.1, 0.3, 0.9, 0.2, 0.8, 0.7]  # tile AUC 1.0
    worse = [0.1, 0.2, 0.1, 0.9, 0.9, 0.2, 0.8, 0.7]
    # repeat 1 tests the same slides in another order (other folds): rows are matched by slide id
    rep0 = [fold(0, 0, [0.2, 0.3, 0.8, 0.9], good), fold(0, 1, [0.2, 0.3, 0.8, 0.9], good)]
    rep1 = [fold(1, 1, [0.2, 0.9, 0.8, 0.3], worse), fold(1, 0, [0.2, 0.9, 0.8, 0.3], worse)]
    res = {"methods": {"m": {"folds": rep0 + rep1}}}
    reps = R.pooled_repeats(res, "m")
    assert isinstance(reps, list) and len(reps) == 2
    both = R.cohort_scores(reps, n_boot=100)
    one = [R.cohort_scores(R.pooled({"methods": {"m": {"folds": f}}}, "m"), n_boot=0) for f in (rep0, rep1)]
    for k in ("bag_auc", "tile_auc_probs"):
        assert both[k]["value"] == pytest.approx((one[0][k]["value"] + one[1][k]["value"]) / 2)
        assert both[k]["low"] <= both[k]["value"] <= both[k]["high"]
    assert both["repeats"] == 2 and both["n_folds"] == 4
    # a single repeat scores exactly as before
    assert R.pooled_repeats({"methods": {"m": {"folds": rep0}}}, "m")["bag_ids"].tolist() == \
        R.pooled({"methods": {"m": {"folds": rep0}}}, "m")["bag_ids"].tolist()


def test_slide_task_line_judges_the_lookalike_family_only():
    R = _suite()
    cohorts = {"1": {"abmil": {"bag_auc": {"value": 0.70}}, "weno": {"bag_auc": {"value": 0.82}}},
               "2": {"abmil": {"bag_auc": {"value": 0.60}}, "weno": {"bag_auc": {"value": 0.75}}},
               "3": {"abmil": {"bag_auc": {"value": 0.80}}, "weno": {"bag_auc": {"value": 0.90}}}}
    (line,) = R.slide_task("lookalike", cohorts)
    assert "weno 0.820 vs abmil 0.700 (+0.120) -> MET" in line
    cohorts["1"]["weno"]["bag_auc"]["value"] = 0.75
    assert R.slide_task("lookalike", cohorts)[0].endswith("-> NOT MET")  # +0.05, below 0.95
    assert "MET" not in R.slide_task("small", cohorts)[0]  # other families: reported, not judged
