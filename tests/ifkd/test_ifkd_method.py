"""IFKD end to end on a hand-made workspace: fit from teacher predictions, save, load, segment a slide."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histokd.data.bags import BagDataset
from histokd.errors import InputError, ModelError
from histokd.methods import METHODS, load_labeler
from histokd.methods.ifkd import IFKDLabeler


def _split(ds: BagDataset, name: str) -> BagDataset:
    return BagDataset([r for r in ds.records if r.split == name], ds.classes, ds.dim)


TINY = {"rounds": 2, "epochs_per_round": 2, "regions_per_slide": 4, "region_size": 32, "batch_size": 8,
        "widths": [8, 8, 16], "sigmas": [0.0, 1.0]}


@pytest.mark.timeout(150)
def test_fit_save_load_predict(tiny_workspace, tmp_path):
    ws = tiny_workspace
    ds = BagDataset.from_workspace(ws["run"], ws["encoder"])
    assert all(ds.slide(i).path.exists() for i in range(len(ds)))  # the bags know their slides
    method = METHODS.get("ifkd")(seed=0, held_out=_split(ds, "test"))  # test slides: reported, never chosen on
    lab = method.fit(_split(ds, "train"), _split(ds, "val"), {"teacher": ws["teacher"], **TINY})
    pm = lab.meta["pixel_metrics"]
    assert pm["validation_score"] == "val_dice_gt"
    assert len(pm["rounds"]) == 2 and "dice_mean" in pm["mil"]["test"] and "dice_mean" in pm["final"]["test"]
    assert 0.1 <= lab.meta["threshold"] <= 0.9
    out = tmp_path / "model"
    lab.save(out)
    assert json.loads((out / "classes.json").read_text()) == ["normal", "tumour"]
    again = load_labeler(out)
    assert isinstance(again, IFKDLabeler)
    row = {"path": str(ws["run"].parent / "data" / "slide1.tiff")}
    coords = np.array([[0, 0], [32, 32]])
    pred = again.predict_slide(row, None, coords)
    assert pred.mask is not None and pred.mask.dtype == np.uint8 and pred.mask.shape == (96, 96)
    assert pred.mask_downsample == pytest.approx(4.0)  # 2 µm/px level 0 -> 8 µm/px working
    assert pred.instance_probs.shape == (2, 2)
    np.testing.assert_allclose(pred.instance_probs.sum(1), 1.0, rtol=1e-5)
    with pytest.raises(ModelError):
        again.predict(np.zeros((2, 2), np.float32))

    # the whole-run labelling: h5 with mask + attr, PNG, pixel metrics per split
    import h5py
    from PIL import Image

    from histokd.pipeline.pixel_outputs import label_ifkd
    from histokd.workspace import Workspace

    wsp = Workspace(ws["run"])
    lab.save(wsp.model_dir("ifkd1"))
    assert label_ifkd(ws["run"], "ifkd1") == {}
    with h5py.File(wsp.predictions_h5("ifkd1", "slide1"), "r") as f:
        assert f["mask"].shape == (96, 96) and f["mask"].attrs["mask_downsample"] == pytest.approx(4.0)
        assert f["instance_probs"].shape == (144, 2) and json.loads(f.attrs["classes"]) == ["normal", "tumour"]
    png = np.asarray(Image.open(wsp.predictions_dir("ifkd1") / "masks" / "slide1.png"))
    assert png.shape == (96, 96) and set(np.unique(png)) <= {0, 255}
    metrics = json.loads((wsp.predictions_dir("ifkd1") / "pixel_metrics.json").read_text())
    assert set(metrics) == {"train", "val", "test", "all"} and 0.0 <= metrics["test"]["dice_global"] <= 1.0


def test_fit_needs_teacher(tiny_workspace):
    ds = BagDataset.from_workspace(tiny_workspace["run"], tiny_workspace["encoder"])
    with pytest.raises(InputError, match="--teacher"):
        METHODS.get("ifkd")().fit(_split(ds, "train"), _split(ds, "val"), {})
    with pytest.raises(ModelError, match="teacher model not found"):
        METHODS.get("ifkd")().fit(_split(ds, "train"), _split(ds, "val"), {"teacher": "nope"})


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_histokd_label_writes_pixel_outputs(tiny_workspace):
    """`histokd label` on an IFKD model: predict_slide hook, mask + PNG, pixel metrics in metrics.json."""
    import h5py

    from histokd.pipeline.label import label
    from histokd.workspace import Workspace

    ws = tiny_workspace
    ds = BagDataset.from_workspace(ws["run"], ws["encoder"])
    lab = METHODS.get("ifkd")(seed=0).fit(_split(ds, "train"), _split(ds, "val"),
                                         {"teacher": ws["teacher"], **TINY, "rounds": 1, "epochs_per_round": 1})
    wsp = Workspace(ws["run"])
    lab.save(wsp.model_dir("ifkd2"))
    res = label(ws["run"], "ifkd2", features=ws["encoder"], n_boot=10)
    assert not res.failures
    with h5py.File(wsp.predictions_h5("ifkd2", "slide3"), "r") as f:
        assert f["mask"].shape == (96, 96) and f.attrs["mask_downsample"] == pytest.approx(4.0)
    assert (wsp.predictions_dir("ifkd2") / "masks" / "slide3.png").exists()
    assert "test" in res.metrics["pixel"] and "froc" in res.metrics["pixel"]["test"]
