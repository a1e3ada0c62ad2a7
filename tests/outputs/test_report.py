"""The report: files, formats, skipping, escaping, CLI."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from shapely.geometry import shape
from typer.testing import CliRunner

from histokd.errors import InputError
from histokd.outputs.report import render_report_html
from histokd.pipeline.report import report
from histokd.predictions import read_prediction


def test_report_writes_every_artefact(built_report):
    run, index = built_report
    out = index.parent
    assert index.name == "index.html" and out == run.root / "reports" / run.model_id
    for sid in ("t1", "t2", "n1"):
        img = Image.open(out / "heatmaps" / f"{sid}.png")
        assert img.size[0] > 300 and img.size[1] > 150
        assert (out / "geojson" / f"{sid}.geojson").is_file()
    # the t1 prediction has a pixel mask: a second panel makes the figure much wider than tall
    w1, h1 = Image.open(out / "heatmaps" / "t1.png").size
    wn, _ = Image.open(out / "heatmaps" / "n1.png").size
    assert w1 > 1.5 * wn
    for name in ("roc", "pr", "calibration", "confusion"):
        assert Image.open(out / "plots" / f"{name}.png").format == "PNG"
    assert not (out / "heatmaps" / "gone.png").exists()
    assert not list(out.rglob("*.tmp"))


def test_tiles_csv_columns_and_values(built_report):
    run, index = built_report
    df = pd.read_csv(index.parent / "tiles.csv")
    assert list(df.columns) == ["slide_id", "x", "y", "prob_normal", "prob_tumour", "instance_score",
                                "gt_tumour_fraction"]
    assert sorted(df["slide_id"].unique()) == ["n1", "t1", "t2"]
    pred = read_prediction(run.root / "predictions" / run.model_id / "t1.h5")
    t1 = df[df.slide_id == "t1"]
    np.testing.assert_array_equal(t1[["x", "y"]].to_numpy(), pred.coords)
    np.testing.assert_allclose(t1["prob_tumour"].to_numpy(), pred.probs[:, 1], atol=1e-5)
    # ground truth fractions from the PNG mask: the tumour square covers exactly 6 tiles
    assert (t1["gt_tumour_fraction"] > 0.99).sum() == 6
    assert (df[df.slide_id == "n1"]["gt_tumour_fraction"] == 0).all()


def test_geojson_is_qupath_compatible_and_valid(built_report):
    run, index = built_report
    gj = json.loads((index.parent / "geojson" / "t1.geojson").read_text())
    assert gj["type"] == "FeatureCollection"
    tiles = [f for f in gj["features"] if f["properties"]["objectType"] == "tile"]
    regions = [f for f in gj["features"] if f["properties"]["objectType"] == "annotation"]
    pred = read_prediction(run.root / "predictions" / run.model_id / "t1.h5")
    assert len(tiles) == len(pred.coords)
    for f in gj["features"]:
        g = shape(f["geometry"])
        assert g.is_valid and g.area > 0
        assert f["geometry"]["type"] in {"Polygon", "MultiPolygon"}
        assert set(f["properties"]["classification"]) == {"name", "color"}
    t0 = tiles[0]
    assert shape(t0["geometry"]).bounds == (pred.coords[0][0], pred.coords[0][1], pred.coords[0][0] + 128,
                                            pred.coords[0][1] + 128)
    assert t0["properties"]["measurements"]["tumour_prob"] == pytest.approx(float(pred.probs[0, 1]), abs=1e-6)
    # the six tumour tiles form one merged rectangle region of the built-in QuPath class
    assert len(regions) == 1
    r = regions[0]
    assert r["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert shape(r["geometry"]).equals(shape({"type": "Polygon", "coordinates": [
        [[256, 256], [640, 256], [640, 512], [256, 512], [256, 256]]]}))
    assert r["properties"]["measurements"]["n_tiles"] == 6
    n1 = json.loads((index.parent / "geojson" / "n1.geojson").read_text())
    assert not [f for f in n1["features"] if f["properties"]["objectType"] == "annotation"]


def test_html_is_self_contained(built_report):
    _, index = built_report
    html = index.read_text()
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", html), "external resource in the report"
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") >= 3 + 4  # heatmaps + plots
    assert html.count("data:image/jpeg;base64,") == 3 * 2 * 3  # top / bottom 3 tiles of 3 slides
    assert "0.91 [0.8, 1]" in html  # a CI from metrics.json
    assert "Skipped slides" in html and "gone" in html


def test_missing_slide_and_prediction_are_skipped_with_a_warning(make_workspace, caplog, tmp_path):
    run = make_workspace(tmp_path)
    with caplog.at_level(logging.WARNING, logger="histokd"):
        index = report(run.root, run.model_id, slides=["t1", "gone", "nopred"], top_k=1, n_boot=0)
    html = index.read_text()
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "gone" in msgs and "nopred" in msgs and "prediction missing" in msgs
    assert (index.parent / "heatmaps" / "t1.png").is_file()
    assert html.count('class="slide"') == 1


def test_escaping_of_untrusted_text(tmp_path):
    evil = "<script>alert(1)</script>"
    html = render_report_html({"model_id": "m", "classes": ["normal", evil], "positive": evil,
                               "slides": [{"slide_id": evil, "label": evil, "split": "", "bag_prob": 0.5,
                                           "pred": evil, "n_tiles": 1, "n_regions_tiles": 0, "has_gt": False,
                                           "heatmap": "data:image/png;base64,AA==", "top": [], "bottom": []}],
                               "skipped": [{"slide_id": evil, "reason": evil}],
                               "metrics_json": [("x", [(evil, evil)])]})
    assert evil not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()


def test_report_with_malicious_class_name_in_predictions_and_cohort(make_workspace, tmp_path):
    evil = "<script>alert(1)</script>"
    run = make_workspace(tmp_path, classes=["normal", evil], tumour_label=evil)
    index = report(run.root, run.model_id, top_k=1, n_boot=0)
    html = index.read_text()
    assert "<script" not in html.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    df = pd.read_csv(index.parent / "tiles.csv")
    assert f"prob_{evil}" in df.columns


def test_missing_predictions_is_one_line_error(make_workspace, tmp_path):
    run = make_workspace(tmp_path)
    with pytest.raises(InputError, match="histokd label"):
        report(run.root, "nope")


def test_cli_report(make_workspace, tmp_path):
    from histokd.cli import app

    run = make_workspace(tmp_path)
    res = CliRunner().invoke(app, ["report", "-w", str(run.root), "--model", run.model_id, "--slides", "t2",
                                   "--top-k", "2", "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert "index.html" in res.output
    assert (run.root / "reports" / run.model_id / "geojson" / "t2.geojson").is_file()
    assert not (run.root / "reports" / run.model_id / "geojson" / "t1.geojson").exists()
    res = CliRunner().invoke(app, ["report", "-w", str(run.root), "--model", "missing"])
    assert res.exit_code == 2 and "error:" in res.output


def test_tile_truth_is_what_label_wrote(tmp_path, make_workspace):
    """The report's tile metrics use the instance labels of `histokd label` (its --tumour-threshold), not the
    masks re-thresholded at 0.5 (issue 14)."""
    import re

    import h5py

    from histokd.data.bags import write_instance_labels
    from histokd.pipeline.report import report
    from histokd.workspace import Workspace

    run = make_workspace(tmp_path)
    ws = Workspace(run.root)

    def n_pos_val(threshold: float) -> tuple[int, int]:
        expected = 0
        for sid in ("t2",):  # the val split: a disc, so tiles partly inside
            path = ws.instance_labels_h5("enc", sid)  # the conftest's feature set
            with h5py.File(path, "r") as f:
                frac = f["tumour_fraction"][()]
            write_instance_labels(path, frac, threshold)
            expected += int((frac > threshold).sum())
        html = report(run.root, run.model_id, top_k=1, n_boot=0, thumbnail_size=64).read_text()
        found = re.search(r"val &middot; n = \d+ tiles \((\d+) tumour\)", html)
        assert found, "no tile table for the val split"
        return int(found.group(1)), expected

    low, high = n_pos_val(0.05), n_pos_val(0.95)
    assert low[0] == low[1] and high[0] == high[1]
    assert low[0] > high[0]


def test_each_slide_links_to_its_view(make_workspace, tmp_path):
    """With a static viewer export in RUN/view/ (or one given with --view, or a viewer's address) every slide of
    the report links to its view: the page opens the slide named after ``#``."""
    run = make_workspace(tmp_path / "ws")
    index = report(run.root, run.model_id, top_k=1, n_boot=10)
    html = index.read_text()
    assert 'class="view"' not in html and "histokd view -w" in html  # no export yet: says how to open one

    (run.root / "view").mkdir()
    (run.root / "view" / "index.html").write_text("<html></html>")
    html = report(run.root, run.model_id, top_k=1, n_boot=10).read_text()
    links = re.findall(r'<a class="view" href="([^"]+)"', html)
    assert "../../view/index.html#t1" in links and "../../view/index.html#n1" in links
    target = (index.parent / links[0].split("#")[0]).resolve()
    assert target == (run.root / "view" / "index.html").resolve()

    html = report(run.root, run.model_id, top_k=1, n_boot=10, view="http://127.0.0.1:8765/?token=abc").read_text()
    assert 'href="http://127.0.0.1:8765/?token=abc#t1"' in html

    with pytest.raises(InputError, match="no viewer export there"):
        report(run.root, run.model_id, top_k=1, n_boot=10, view=tmp_path / "nothing")


def test_report_aggregates_per_patient(make_workspace, tmp_path):
    """A cohort with patient ids that group slides gets a bag table per patient beside the one per slide."""
    run = make_workspace(tmp_path / "ws")
    co = pd.read_csv(run.root / "cohort.csv", dtype=str)
    co["patient_id"] = ["P1" if s in ("t1", "n1") else f"P-{s}" for s in co["slide_id"]]
    co.to_csv(run.root / "cohort.csv", index=False)
    html = report(run.root, run.model_id, top_k=1, n_boot=10).read_text()
    assert "per patient (max over its slides)" in html


def test_pixel_tables_from_label_and_ifkd():
    """The report's pixel tables: a tile labeller's painted pseudo-masks per split, and for IFKD the MIL pseudo-masks
    beside the student on the test slides."""
    from histokd.outputs.report import pixel_tables

    pred = {"pixel_painted": {"work_mpp": 8.0, "threshold": 0.4, "threshold_chosen_on": "val",
                              "splits": {"test": {"dice_mean": 0.5, "pixel_auc": 0.9, "froc": float("nan")}}}}
    model = {"mil": {"test": {"dice_mean": 0.68}}, "final": {"test": {"dice_mean": 0.82}}}
    tables = pixel_tables(pred, model)
    titles = [t["title"] for t in tables]
    assert titles[0].startswith("test · painted tile probabilities at 8.0 µm/px, threshold 0.4 (val)")
    assert dict(tables[0]["rows"]) == {"Dice (mean over tumour slides)": "0.500", "pixel AUC": "0.900"}  # NaN left out
    assert "test · MIL pseudo-masks (the teacher's), calibrated on validation" in titles
    assert dict(tables[-1]["rows"])["Dice (mean over tumour slides)"] == "0.820"
    assert pixel_tables({}, {}) == []
