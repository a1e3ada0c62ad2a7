"""End to end through the public API: synth -> tile -> embed -> train -> label -> report."""

import json

import h5py
import pytest

import histokd


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path):
    csv = histokd.synth(tmp_path / "cohort", slides=6, seed=3, preset="easy", size=2048, workers=1)
    ws = tmp_path / "run"
    res = histokd.tile(csv, ws, mpp=0.5, size=112, workers=1)
    assert not res.failures
    histokd.embed(ws, encoder="handcrafted", workers=0)
    model_dir = histokd.train(
        ws, features="handcrafted", method="weno", model_id="weno", overrides={"epochs": 4, "min_student_steps": 5}
    )
    assert (model_dir / "model.pt").exists() and (model_dir / "config.yaml").exists()
    histokd.label(ws, model="weno", n_boot=50)
    preds = sorted((ws / "predictions" / "weno").glob("*.h5"))
    assert len(preds) == 6
    with h5py.File(preds[0]) as f:
        probs = f["instance_probs"][()]
        assert probs.ndim == 2 and probs.shape[1] == 2 and len(f["coords"]) == len(probs)
        assert abs(float(f.attrs["bag_probs"].sum()) - 1) < 1e-5
    metrics = json.loads((ws / "predictions" / "weno" / "metrics.json").read_text())
    assert "all" in metrics["splits"]
    # any tile labeller: pixel metrics of the pseudo-masks its tile probabilities paint, per split
    painted = metrics["pixel_painted"]
    assert painted["work_mpp"] == 8.0 and 0.1 <= painted["threshold"] <= 0.9
    assert {"dice_mean", "pixel_auc", "froc"} <= set(painted["splits"]["all"])
    assert 0.0 <= painted["splits"]["all"]["pixel_auc"] <= 1.0
    index = histokd.report(ws, "weno", n_boot=50)
    html = index.read_text()
    assert "painted tile probabilities at 8.0 µm/px" in html and "pixel AUC" in html
    assert "<html" in html.lower() and "synth_000" in html
    assert len(list((index.parent / "heatmaps").glob("*.png"))) == 6
    assert len(list((index.parent / "geojson").glob("*.geojson"))) == 6
