"""Issue 14, item 3: every registered method trains through the engine's loop, ``--max-epochs N`` caps every
stage (teacher, student, each IFKD round, ``train-encoder``), and the model it writes labels a workspace.

The workspace is the bad-input suite's tiny cohort (8 slides of 256 px, 16 tiles each, handcrafted features);
each stage's epoch count is read from the engine's one summary line per stage in ``train.log``
(``<stage>: <n> epochs in <s> s``) and, where the model folder keeps it, from the saved history.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "robustness"))
from badinput import TILE_ARGS, cli, cohort_rows, make_slide_files, write_cohort

import histokd.methods as M
from histokd.config import read_yaml

pytestmark = pytest.mark.slow  # end to end: tile, embed, then every method trained and labelled (~45 s)

TEACHER = "teacher"
# IFKD on 256 px slides: a 2 um/px working resolution gives 64 px images; small regions and nets
IFKD_SET = ["--teacher", TEACHER, "--set", "work_mpp=2", "--set", "region_size=32", "--set", "batch_size=4",
            "--set", "regions_per_slide=2", "--set", "widths=[4,8,16]", "--set", "window=64"]
STAGE = re.compile(r" INFO (.+?): (\d+) epochs in [\d.]+ s")


def expected_stages(method: str) -> set[str]:
    if method == "weno":
        return {"weno"}
    if method == "distill-to-label":
        return {"distill-to-label teacher", "distill-to-label student"}
    if method == "ifkd":
        return {f"IFKD round {k}/3" for k in (1, 2, 3)}
    return {"train"}  # plain MIL teachers: fit_mil


def stage_epochs(model_dir: Path) -> dict[str, list[int]]:
    """Stage name -> epochs run, from the engine's summary lines in the model's train.log."""
    out: dict[str, list[int]] = {}
    for name, n in STAGE.findall((model_dir / "train.log").read_text()):
        out.setdefault(name, []).append(int(n))
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiled + embedded tiny workspace with an abmil teacher labelled (IFKD's pseudo-masks)."""
    root = tmp_path_factory.mktemp("every_method")
    files = make_slide_files(root / "slides")
    # paired_path: train-encoder reads it (ssl-he trains on the H&E alone; the slide is its own pair)
    rows = [[*r, r[1]] for r in cohort_rows(files)]
    cohort = write_cohort(root / "cohort.csv", rows, ("slide_id", "path", "label", "split", "paired_path"),
                          tissue_png=files.tissue_png)
    ws = root / "run"
    assert cli("tile", cohort, "-w", ws, *TILE_ARGS).exit_code == 0
    assert cli("embed", "-w", ws, "-e", "handcrafted", "-j", "0").exit_code == 0
    r = cli("train", "-w", ws, "--method", "abmil", "--max-epochs", "1", "--model-id", TEACHER)
    assert r.exit_code == 0, r.output
    r = cli("label", "-w", ws, "--model", TEACHER, "--bootstrap", "10")
    assert r.exit_code == 0, r.output
    return ws


@pytest.mark.parametrize("method", M.METHODS.names())
def test_every_method_trains_one_epoch_per_stage_and_labels(workspace: Path, method: str):
    extra = IFKD_SET if method == "ifkd" else []
    mid = f"{method}-e1"
    r = cli("train", "-w", workspace, "--method", method, "--max-epochs", "1", "--model-id", mid, *extra)
    assert r.exit_code == 0, r.output
    model = workspace / "models" / mid
    stages = stage_epochs(model)
    assert set(stages) == expected_stages(method), stages
    assert all(n == [1] for n in stages.values()), stages  # each stage ran once, for exactly one epoch

    r = cli("label", "-w", workspace, "--model", mid, "--bootstrap", "10")
    assert r.exit_code == 0, r.output
    preds = sorted((workspace / "predictions" / mid).glob("*.h5"))
    assert len(preds) == 8, preds


def test_max_epochs_caps_what_the_model_folder_records(workspace: Path):
    """The saved histories agree with the log: one epoch per stage, one per IFKD round."""
    mil = json.loads((workspace / "models" / "abmil-e1" / "metrics.json").read_text())
    assert len(mil["history"]) == 1
    d2l = read_yaml(workspace / "models" / "distill-to-label-e1" / "config.yaml")
    assert len(d2l["labeler"]["teacher_history"]) == 1
    assert d2l["config"]["max_epochs"] == 1
    assert read_yaml(workspace / "models" / "weno-e1" / "config.yaml")["config"]["max_epochs"] == 1
    ifkd = read_yaml(workspace / "models" / "ifkd-e1" / "config.yaml")
    assert [r["epochs"] for r in ifkd["history"]] == [1, 1, 1]


def test_max_epochs_two_runs_two_epochs(workspace: Path):
    """A cap above one really is the number of epochs where early stopping cannot end the stage sooner."""
    r = cli("train", "-w", workspace, "--method", "weno", "--max-epochs", "2", "--model-id", "weno-e2")
    assert r.exit_code == 0, r.output
    assert stage_epochs(workspace / "models" / "weno-e2") == {"weno": [2]}


def test_train_encoder_max_epochs(workspace: Path):
    r = cli("train-encoder", "-w", workspace, "--method", "ssl-he", "--epochs", "5", "--max-epochs", "1",
            "--max-tiles", "32", "--batch-size", "8", "--tile-size", "16", "--id", "enc", "--threads", "1")
    assert r.exit_code == 0, r.output
    hist = json.loads((workspace / "encoders" / "enc" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1]


@pytest.mark.parametrize("method", M.METHODS.names())
def test_every_method_trains_in_bf16(workspace: Path, method: str):
    """``--precision bf16-mixed`` means the same for every method: each stage's training passes run under
    bf16 autocast (the engine's stage line says so; the Fabric loop's Fabric does it), and the model labels."""
    extra = IFKD_SET if method == "ifkd" else []
    mid = f"{method}-bf16"
    r = cli("train", "-w", workspace, "--method", method, "--max-epochs", "1", "--precision", "bf16-mixed",
            "--model-id", mid, *extra)
    assert r.exit_code == 0, r.output
    model = workspace / "models" / mid
    cfg = read_yaml(model / "config.yaml")["config"]
    assert (cfg.get("train") or cfg.get("runtime"))["precision"] == "bf16-mixed"
    lines = [ln for ln in (model / "train.log").read_text().splitlines() if STAGE.search(ln)]
    assert lines and all(ln.endswith("; bf16-mixed") for ln in lines if "side by side" not in ln), lines
    r = cli("label", "-w", workspace, "--model", mid, "--bootstrap", "10")
    assert r.exit_code == 0, r.output


def test_devices_for_a_one_process_method_is_refused_in_one_line(workspace: Path):
    r = cli("train", "-w", workspace, "--method", "weno", "--devices", "2", "--model-id", "weno-d2")
    assert r.exit_code != 0
    msg = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(msg) == 1 and "--devices 2" in msg[0] and "Traceback" not in r.output, r.output
    assert not (workspace / "models" / "weno-d2" / "model.pt").exists()
