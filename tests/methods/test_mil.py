"""Plain MIL methods end to end: train -> model folder -> load_labeler -> label -> metrics; bench."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import histokd
from histokd.data.bags import write_instance_labels
from histokd.data.benchmarks import digit_bags
from histokd.errors import InputError, ModelError
from histokd.features.store import write_features
from histokd.methods import METHODS, load_labeler
from histokd.workspace import Workspace

PLAIN = ["abmil", "gated-abmil", "chowder", "dsmil", "transmil", "clam-sb", "meanpool", "maxpool"]
FAST = ["train.max_epochs=3", "train.batch_size=4"]


def test_plain_methods_registered() -> None:
    assert set(PLAIN) <= set(METHODS.names())


@pytest.fixture(scope="module")
def digit_ws(tmp_path_factory):
    """A workspace of digit bags as feature files: tumour bags hold 9s (instance labels known)."""
    root = tmp_path_factory.mktemp("ws")
    ws = Workspace(root / "run")
    ds = digit_bags(target=9, n_bags=24, bag_size=8, witness_rate=0.3, seed=0)
    rows = ["slide_id,path,label,split"]
    for i in range(len(ds)):
        b = ds[i]
        sid = f"slide{i:02d}"
        coords = np.stack([np.arange(len(b.features)) * 64, np.zeros(len(b.features))], 1)
        write_features(ws.features_h5("enc", sid), b.features.numpy(), coords, {"patch_size_level0": 64})
        write_instance_labels(ws.features_dir("enc") / "instance_labels" / f"{sid}.h5",
                              b.instance_labels.astype(np.float32), 0.5)
        split = ["train", "train", "val", "test"][i % 4]
        rows.append(f"{sid},x.tiff,{'tumour' if b.label else 'normal'},{split}")
    write_features(ws.features_h5("enc", "unlabelled"), ds[0].features.numpy(), np.zeros((len(ds[0].features), 2)))
    ws.cohort_csv.write_text("\n".join(rows) + "\n")
    return ws


def test_train_label_end_to_end(digit_ws) -> None:
    ws = digit_ws
    out = histokd.train(ws.root, features="enc", method="abmil", overrides=FAST, seed=0)
    assert out == ws.model_dir("abmil-enc-s0")
    for name in ("model.pt", "config.yaml", "classes.json", "metrics.json", "train.log", "splits.csv"):
        assert (out / name).exists(), name
    assert json.loads((out / "classes.json").read_text()) == ["normal", "tumour"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_bags"] == {"train": 12, "val": 6, "test": 6} and len(m["history"]) == 3
    with pytest.raises(ModelError, match="overwrite"):
        histokd.train(ws.root, features="enc", method="abmil", overrides=FAST, seed=0)

    res = histokd.label(ws.root, "abmil-enc-s0", n_boot=50)
    assert not res.failures and res.n_slides == 25  # every slide with features, the unlabelled one too
    with h5py.File(ws.predictions_h5("abmil-enc-s0", "slide00"), "r") as f:
        n = f["coords"].shape[0]
        assert f["instance_probs"].shape == (n, 2) and f["instance_scores"].shape == (n,)
        assert json.loads(f.attrs["classes"]) == ["normal", "tumour"] and f.attrs["method"] == "abmil"
        np.testing.assert_allclose(f["instance_probs"][()].sum(1), 1.0, rtol=1e-5)
        assert f.attrs["bag_probs"].shape == (2,) and f.attrs["patch_size_level0"] == 64
    metrics = json.loads((ws.predictions_dir("abmil-enc-s0") / "metrics.json").read_text())
    test = metrics["splits"]["test"]
    assert test["n_bags"] == 6 and len(test["auc"]["ci95"]) == 2
    assert "auc" in test["instance_from_probs"] and "auc" in test["instance_from_scores"]
    bags = (ws.predictions_dir("abmil-enc-s0") / "bags.csv").read_text().splitlines()
    assert bags[0] == "slide_id,split,label,pred,prob_normal,prob_tumour" and len(bags) == 26

    # the saved labeler predicts exactly what the predictions file holds
    lab = load_labeler(out)
    with h5py.File(ws.features_h5("enc", "slide03"), "r") as f:
        pred = lab.predict(f["features"][()])
    with h5py.File(ws.predictions_h5("abmil-enc-s0", "slide03"), "r") as f:
        np.testing.assert_allclose(pred.instance_probs, f["instance_probs"][()], rtol=1e-6)
        np.testing.assert_allclose(pred.bag_probs, f.attrs["bag_probs"], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in PLAIN if m != "abmil"])
def test_every_plain_method_trains_and_reloads(digit_ws, method) -> None:
    out = histokd.train(digit_ws.root, features="enc", method=method, overrides=FAST, seed=1)
    lab = load_labeler(out)
    x = np.random.default_rng(0).random((7, 64)).astype(np.float32)
    p1, p2 = lab.predict(x), load_labeler(out).predict(x)
    assert p1.bag_probs.shape == (2,) and p1.instance_probs.shape == (7, 2) and p1.instance_scores.shape == (7,)
    np.testing.assert_array_equal(p1.bag_probs, p2.bag_probs)


def test_config_errors(digit_ws) -> None:
    with pytest.raises(InputError, match="lrr"):
        histokd.train(digit_ws.root, features="enc", method="abmil", overrides=["train.lrr=1"], model_id="x")
    with pytest.raises(InputError, match="unknown method"):
        histokd.train(digit_ws.root, features="enc", method="nope")


def test_bench_reports_bag_and_instance_metrics(tmp_path) -> None:
    res = histokd.bench("digit-bags:n_bags=30,bag_size=6,witness_rate=0.3", "meanpool,abmil", "cv:3x1",
                        overrides=["train.max_epochs=2"], json_out=tmp_path / "b.json")
    saved = json.loads((tmp_path / "b.json").read_text())
    for name in ("meanpool", "abmil"):
        r = saved["methods"][name]
        assert len(r["folds"]) == 3 and set(r["bag"]) == {"auc", "accuracy", "balanced_accuracy", "f1"}
        assert {"mean", "std", "ci_low", "ci_high"} <= set(r["bag"]["accuracy"])
        assert "auc" in r["instance_from_scores"] and "auc" in r["instance_from_probs"]
    assert res["methods"]["abmil"]["fit_seconds"]["mean"] > 0


def test_partial_train_override_keeps_method_defaults() -> None:
    from histokd.config import validate_config
    from histokd.methods.base import METHODS

    cfg = validate_config(METHODS.get("chowder").config_cls, {"train": {"lr": 5e-3}, "model": {"r": 3}})
    assert cfg.train.lr == 5e-3 and cfg.model.r == 3
    default = METHODS.get("chowder").config_cls()
    assert cfg.train.batch_size == default.train.batch_size and cfg.train.max_epochs == default.train.max_epochs
    assert cfg.model.hidden == default.model.hidden
    with pytest.raises(Exception, match="train"):
        validate_config(METHODS.get("chowder").config_cls, {"train": {"nope": 1}})


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_cli_train_ddp_two_cpu_processes(digit_ws) -> None:
    """`histokd train --devices 2 --strategy ddp` (Fabric re-launches the command for rank 1): finishes,
    rank 0 writes the model, every training bag is seen once per epoch across the two shards."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HISTOKD_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "histokd", "train", "-w", str(digit_ws.root), "--features", "enc", "--method",
           "abmil", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu", "--model-id", "ddp-cli",
           "--set", "train.max_epochs=2", "--overwrite"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=140)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((digit_ws.model_dir("ddp-cli") / "metrics.json").read_text())
    assert [h["train_bags"] for h in m["history"]] == [12, 12]
    assert load_labeler(digit_ws.model_dir("ddp-cli")).predict(np.zeros((3, 64), np.float32)).bag_probs.shape == (2,)
