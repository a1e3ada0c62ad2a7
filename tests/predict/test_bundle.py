"""Model bundles (issue 17): written by train, used from another workspace, refused on a mismatch, exported
and imported (safely)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from predict_slides import TILE_ARGS, cli, write_cohort, write_slide

from histokd.errors import ModelError
from histokd.pipeline.bundle import choose_thresholds, extract_archive, read_bundle
from histokd.predictions import read_prediction


def _new_workspace(root: Path, mpp: str = "1.0", labelled: bool = True) -> Path:
    """Four new slides (other seeds) tiled and embedded with handcrafted features in ``root/run``."""
    rows = [[f"x{i}", str(write_slide(root / "slides" / f"x{i}.tif", 900 + i, i % 2 == 1)), ["normal", "tumour"][i % 2]]
            for i in range(4)]
    co = write_cohort(root / "cohort.csv", [r if labelled else r[:2] for r in rows],
                      ["slide_id", "path", "label"] if labelled else ["slide_id", "path"])
    run = root / "run"
    args = list(TILE_ARGS)
    args[1] = mpp
    assert cli("tile", co, "-w", run, *args).exit_code == 0
    assert cli("embed", "-w", run, "-e", "handcrafted", "-j", "0").exit_code == 0
    return run


def _error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


def test_train_writes_a_bundle_without_slide_ids(bundle_dir: Path):
    b = read_bundle(bundle_dir)
    assert b["model_id"] == "m" and b["method"] == "abmil"
    assert b["classes"] == ["normal", "tumour"] and b["positive_class"] == "tumour"
    f = b["features"]
    assert (f["spec"], f["dim"], f["precision"], f["stain_norm"], f["dtype"]) == ("handcrafted", 55, "fp32", "none",
                                                                                    "float32")
    assert len(f["weights_hash"]) == 64 and f["target_mpp"] == 1.0 and f["patch_size"] == 32
    t = b["tiling"]
    assert (t["target_mpp"], t["patch_size"], t["overlap"], t["min_tissue"], t["tissue_source"]) == (1.0, 32, 0, 0.5, "auto")
    assert t["tissue_params"]["sat_min"] == 0.05
    th = b["thresholds"]
    assert th["chosen_on"] == "val" and th["n_val"] == 4 and 0 <= th["youden"]["threshold"] <= 1
    assert th["at_specificity"]["specificity"] >= 0.95
    feats, colour = b["ood"]["features"], b["ood"]["colour"]
    assert feats["n_slides"] == 10 and len(feats["mean"]) == 55 and feats["threshold"] > 0
    assert colour["n_slides"] == 10 and len(colour["mean"]) == 12 and colour["threshold"] > 0
    assert set(b["files"]) == {"model.pt", "config.yaml", "classes.json"}
    text = (bundle_dir / "bundle.json").read_text()
    for sid in ("n0", "t0", "n5", "t5"):  # no slide id, no slide path
        assert f'"{sid}"' not in text
    assert "/slides/" not in text and str(bundle_dir.parents[2]) not in text


def test_thresholds_on_validation():
    t = choose_thresholds(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.6, 0.9]))
    assert t["youden"] == {"threshold": pytest.approx(0.45), "sensitivity": 1.0, "specificity": 1.0}
    one = choose_thresholds(np.array([1, 1]), np.array([0.4, 0.9]))
    assert one["youden"] is None and "lacks one of the classes" in one["note"]


def test_label_with_a_model_folder_from_another_workspace(bundle_dir: Path, tmp_path: Path):
    run = _new_workspace(tmp_path)
    r = cli("label", "-w", run, "--model", bundle_dir, "--bootstrap", "20")
    assert r.exit_code == 0, r.output
    installed = run / "models" / "m"
    assert (installed / "bundle.json").is_file() and (installed / "model.pt").is_file()
    assert not (installed / "splits.csv").exists() and not (installed / "metrics.json").exists()
    preds = sorted(p.stem for p in (run / "predictions" / "m").glob("*.h5"))
    assert preds == ["x0", "x1", "x2", "x3"]
    p = read_prediction(run / "predictions" / "m" / "x1.h5")
    assert p.classes == ["normal", "tumour"] and len(p.probs) == 36
    # the id now names the installed copy: label -m m and report work as for a model trained here
    assert cli("label", "-w", run, "--model", "m", "--bootstrap", "20").exit_code == 0
    assert cli("report", "-w", run, "--model", "m", "--bootstrap", "20").exit_code == 0


def test_a_mismatched_workspace_is_refused_with_one_line(bundle_dir: Path, tmp_path: Path):
    run = _new_workspace(tmp_path, mpp="2.0")
    r = cli("label", "-w", run, "--model", bundle_dir)
    assert r.exit_code == 2
    lines = _error_lines(r.output)
    assert len(lines) == 1 and r.output.strip().splitlines()[-1] == lines[0]
    assert "2.0 µm/px, the model's is 1.0" in lines[0] and "histokd predict" in lines[0]
    assert not (run / "predictions" / "m").exists()
    # other precision: one line naming it
    for p in (run / "features" / "handcrafted").glob("*.h5"):
        with h5py.File(p, "a") as f:
            f.attrs["target_mpp"] = 1.0
            f.attrs["precision"] = "bf16"
    r = cli("label", "-w", run, "--model", "m")
    assert r.exit_code == 2 and "precision bf16, the model's is fp32" in r.output
    assert len(_error_lines(r.output)) == 1


def test_another_encoder_or_dimension_is_refused_with_one_line(bundle_dir: Path, tmp_path: Path):
    run = _new_workspace(tmp_path)
    files = sorted((run / "features" / "handcrafted").glob("*.h5"))
    for p in files:  # the same dimension, from another encoder
        with h5py.File(p, "a") as f:
            f.attrs["encoder"] = "timm:resnet18"
            f.attrs["weights_hash"] = "f" * 64
    r = cli("label", "-w", run, "--model", bundle_dir)
    assert r.exit_code == 2 and len(_error_lines(r.output)) == 1
    assert "encoder timm:resnet18 (weights ffffffffffff), the model's is handcrafted" in r.output
    assert not list((run / "predictions").glob("m/*.h5"))
    for p in files:  # another dimension
        with h5py.File(p, "a") as f:
            x = f["features"][()]
            del f["features"]
            f["features"] = x[:, :40]
    r = cli("label", "-w", run, "--model", "m")
    assert r.exit_code == 2 and len(_error_lines(r.output)) == 1
    assert "features are 40-d but model 'm' was trained on 55-d features (handcrafted)" in r.output


def test_a_model_folder_moved_elsewhere_still_works(bundle_dir: Path, tmp_path: Path):
    import shutil

    moved = tmp_path / "elsewhere" / "m"
    shutil.copytree(bundle_dir, tmp_path / "copy")
    shutil.move(str(tmp_path / "copy"), str(moved))  # the folder alone, away from its workspace
    run = _new_workspace(tmp_path / "w")
    r = cli("label", "-w", run, "--model", moved, "--bootstrap", "10")
    assert r.exit_code == 0, r.output
    assert sorted(p.stem for p in (run / "predictions" / "m").glob("*.h5")) == ["x0", "x1", "x2", "x3"]


def test_another_model_under_the_same_id_is_refused(bundle_dir: Path, tmp_path: Path):
    run = _new_workspace(tmp_path)
    assert cli("train", "-w", run, "--method", "meanpool", "--model-id", "m", "--max-epochs", "1").exit_code == 0
    r = cli("label", "-w", run, "--model", bundle_dir)
    assert r.exit_code == 2 and "another model with id 'm' is already in this workspace" in r.output


def test_export_and_import_roundtrip(bundle_dir: Path, tmp_path: Path):
    run = bundle_dir.parents[1]
    out = tmp_path / "m.tar.gz"
    r = cli("export-model", "-w", run, "-m", "m", "-o", out)
    assert r.exit_code == 0, r.output
    with tarfile.open(out) as tar:
        names = sorted(tar.getnames())
    assert names == ["m/bundle.json", "m/classes.json", "m/config.yaml", "m/model.pt"]
    full = tmp_path / "full.tar.gz"
    assert cli("export-model", "-w", run, "-m", "m", "-o", full, "--include-cohort").exit_code == 0
    with tarfile.open(full) as tar:
        assert {"m/splits.csv", "m/metrics.json", "m/train.log"} <= set(tar.getnames())
    # the archive works like the folder, from another workspace
    ws_a, ws_b = _new_workspace(tmp_path / "a"), _new_workspace(tmp_path / "b")
    assert cli("label", "-w", ws_a, "--model", out, "--bootstrap", "10").exit_code == 0
    assert cli("label", "-w", ws_b, "--model", bundle_dir, "--bootstrap", "10").exit_code == 0
    for sid in ("x0", "x1", "x2", "x3"):
        pa = read_prediction(ws_a / "predictions" / "m" / f"{sid}.h5")
        pb = read_prediction(ws_b / "predictions" / "m" / f"{sid}.h5")
        np.testing.assert_array_equal(pa.probs, pb.probs)
    assert not list((ws_a / "models").glob(".histokd-import-*"))  # the unpacked copy is removed
    bad = tmp_path / "m.zip"
    assert cli("export-model", "-w", run, "-m", "m", "-o", bad).exit_code == 2


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(("members", "why"), [
    ([_file("m/bundle.json"), _file("m/../../evil.txt")], "points outside"),
    ([_file("m/bundle.json"), _file("/tmp/evil-abs.txt")], "points outside"),
    ([_file("m/bundle.json"), _special("m/model.pt", tarfile.SYMTYPE, "/etc/passwd")], "is a link"),
    ([_file("m/bundle.json"), _special("m/hard", tarfile.LNKTYPE, "m/bundle.json")], "is a link"),
    ([_file("m/bundle.json"), _special("m/dev", tarfile.CHRTYPE)], "device or special file"),
    ([_file("m/bundle.json"), _special("m/fifo", tarfile.FIFOTYPE)], "device or special file"),
    ([_file("m/bundle.json"), _file("n/bundle.json")], "one model folder"),
])
def test_a_malicious_archive_is_refused_before_anything_is_written(tmp_path: Path, members, why):
    arc = _archive(tmp_path / "bad.tar.gz", members)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ModelError, match=why) as e:
        extract_archive(arc, dest)
    assert "\n" not in str(e.value)
    assert list(dest.iterdir()) == [] and not (tmp_path / "evil.txt").exists()
    # through the CLI: one line, exit 2, the workspace's models/ left without the unpacked copy
    run = tmp_path / "run"
    r = cli("label", "-w", run, "--model", arc)
    assert r.exit_code == 2 and why in r.output and len(_error_lines(r.output)) == 1
    assert not list((run / "models").glob(".histokd-import-*"))


def test_a_damaged_or_foreign_bundle_is_one_line(bundle_dir: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(bundle_dir, copy)
    (copy / "model.pt").write_bytes(b"not the weights")
    r = cli("label", "-w", tmp_path / "run", "--model", copy)
    assert r.exit_code == 2 and "does not match the sha256" in r.output
    (copy / "bundle.json").unlink()
    r = cli("label", "-w", tmp_path / "run", "--model", copy)
    assert r.exit_code == 2 and "no bundle.json" in r.output
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    r = cli("label", "-w", tmp_path / "run", "--model", junk)
    assert r.exit_code == 2 and "not a readable model archive" in r.output
    assert json.loads((bundle_dir / "bundle.json").read_text())["model_id"] == "m"  # the source is untouched
    r = cli("label", "-w", tmp_path / "nothere", "--model", bundle_dir)  # label makes no run folder
    assert r.exit_code == 2 and "no such run folder" in r.output and not (tmp_path / "nothere").exists()


@pytest.mark.slow
def test_a_bundle_of_an_mfl_encoder_carries_its_encoder(tmp_path: Path):
    """Features of an ``mfl:`` encoder: the bundle copies the encoder folder, so the exported model still
    works after the original encoder folder is gone (moved to another machine)."""
    import shutil

    from predict_slides import training_cohort

    from histokd.methods.more_from_less import MFLConfig, fit_encoders, save_encoder

    cfg = MFLConfig(method="ssl-he", epochs=1, batch_size=8, tile_size=24, proj_hidden=32, proj_dim=32)
    tiles = np.random.default_rng(0).integers(0, 256, size=(16, 24, 24, 3), dtype=np.uint8)
    nets, info = fit_encoders(tiles, None, cfg, show_progress=False)
    enc_dir = save_encoder(tmp_path / "enc", nets, cfg, info, {"note": "test"})
    co = training_cohort(tmp_path / "slides")
    run = tmp_path / "run"
    for args in (("tile", co, "-w", run, *TILE_ARGS), ("embed", "-w", run, "-e", f"mfl:{enc_dir}", "-j", "0"),
                 ("train", "-w", run, "--method", "abmil", "--model-id", "m", "--max-epochs", "3")):
        assert cli(*args).exit_code == 0
    b = read_bundle(run / "models" / "m")
    assert b["features"]["folder"] == "encoder" and b["features"]["dim"] == 128
    assert {"encoder/model.pt", "encoder/config.yaml"} <= set(b["files"])
    out = tmp_path / "m.tar.gz"
    assert cli("export-model", "-w", run, "-m", "m", "-o", out).exit_code == 0
    shutil.rmtree(enc_dir)  # the original encoder is gone
    new = write_cohort(tmp_path / "new.csv", [["y0", str(write_slide(tmp_path / "y0.tif", 7, True))]],
                       ["slide_id", "path"])
    r = cli("predict", new, "--model", out, "-w", tmp_path / "pred", "-j", "1", "--no-report")
    assert r.exit_code == 0, r.output
    installed = tmp_path / "pred" / "models" / "m" / "encoder"
    fdirs = [p.name for p in (tmp_path / "pred" / "features").iterdir()]
    assert len(fdirs) == 1 and fdirs[0].startswith("mfl_") and "encoder" in fdirs[0]
    assert (installed / "model.pt").is_file()
    assert read_prediction(tmp_path / "pred" / "predictions" / "m" / "y0.h5").probs.shape == (36, 2)
