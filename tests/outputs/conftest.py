"""A tiny hand-made workspace in the layout of contracts 1, 4 and 7: slides, cohort.csv, tiles, predictions.

Slides are 1024 x 768 px at 0.5 µm/px; tiles are 128 level-0 px (64 px at 1 µm/px). Slide ``t1`` has a
tumour square (PNG ground truth) and a pixel mask in its prediction, ``t2`` a tumour disc (ASAP XML
ground truth), ``n1`` is normal, ``gone`` has a prediction but no slide file, ``nopred`` a slide but no
prediction. ``label``'s tile truth (contract 6) is under ``features/enc/instance_labels/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from histokd.classes import positive_class
from histokd.data.bags import instance_labels_path, write_instance_labels
from histokd.synth.tiff import write_pyramid_tiff
from histokd.workspace import Workspace

W, H, MPP, TILE_L0 = 1024, 768, 0.5, 128
MODEL = "abmil-test"
FEATURES = "enc"


@dataclass
class Run:
    root: Path
    model_id: str
    classes: list[str]


def _slide_image(tumour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pink tissue on white with purple tumour where ``tumour`` [H, W] is set."""
    img = np.full((H, W, 3), 245, np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    tissue = ((xx - W / 2) / (0.45 * W)) ** 2 + ((yy - H / 2) / (0.45 * H)) ** 2 < 1
    img[tissue] = (232, 170, 200)
    img[tissue & tumour] = (120, 60, 150)
    noise = rng.integers(-12, 12, size=img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def _tile_grid() -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(0, W - TILE_L0 + 1, TILE_L0), np.arange(0, H - TILE_L0 + 1, TILE_L0))
    return np.column_stack([xs.ravel(), ys.ravel()]).astype(np.int64)


def _write_tiles(path: Path, sid: str, slide_path: Path, coords: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["coords"] = coords
        f["tissue"] = np.ones(len(coords), np.float32)
        f.attrs.update(patch_size=64, patch_size_level0=TILE_L0, target_mpp=1.0, level0_mpp=MPP, overlap=0,
                       slide_id=sid, slide_path=str(slide_path), min_tissue=0.5, histokd_version="test")


def _write_prediction(path: Path, sid: str, coords: np.ndarray, p: np.ndarray, classes: list[str],
                      pixel_mask: np.ndarray | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pos = positive_class(classes)
    probs = np.zeros((len(coords), len(classes)), np.float32)
    probs[:, pos] = p
    probs[:, [i for i in range(len(classes)) if i != pos][0]] = 1 - p
    bag = np.zeros(len(classes), np.float32)
    bag[pos] = float(np.max(p))
    bag[[i for i in range(len(classes)) if i != pos][0]] = 1 - bag[pos]
    with h5py.File(path, "w") as f:
        f["instance_probs"] = probs
        f["coords"] = coords
        f["instance_scores"] = (p * 3 - 1).astype(np.float32)
        if pixel_mask is not None:
            d = f.create_dataset("mask", data=pixel_mask.astype(np.uint8))
            d.attrs["mask_downsample"] = 16.0
        f.attrs.update(bag_probs=bag, classes=json.dumps(classes), model_id=MODEL, method="abmil",
                       patch_size_level0=float(TILE_L0), slide_id=sid)
    return bag


def make_run(root: Path, classes: list[str] | None = None, tumour_label: str = "tumour") -> Run:
    """Write the workspace under ``root``; ``tumour_label`` is the class name used for tumour slides."""
    classes = classes or ["normal", "tumour"]
    normal_label = [c for c in classes if c != tumour_label][0]
    rng = np.random.default_rng(0)
    slides_dir, ws = root / "slides", root / "run"
    slides_dir.mkdir(parents=True)
    yy, xx = np.mgrid[0:H, 0:W]
    tumours = {
        "t1": (xx >= 256) & (xx < 640) & (yy >= 256) & (yy < 512),
        "t2": (xx - 700) ** 2 + (yy - 400) ** 2 < 180**2,
        "n1": np.zeros((H, W), bool),
        "gone": np.zeros((H, W), bool),
        "nopred": np.zeros((H, W), bool),
    }
    rows = ["slide_id,path,label,split,mask_path"]
    coords = _tile_grid()
    bag_rows = []
    for sid, tum in tumours.items():
        slide_path = slides_dir / f"{sid}.tiff"
        if sid != "gone":
            write_pyramid_tiff(slide_path, _slide_image(tum, rng), mpp=MPP, n_levels=3, tile=256)
        if sid != "t2":  # PNG ground truth at downsample 8 (all zero for normal slides)
            mask_path = str(slides_dir / f"{sid}_mask.png")
            Image.fromarray((tum[::8, ::8] * 255).astype(np.uint8)).save(mask_path)
        else:
            mask_path = str(slides_dir / "t2.xml")
            ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
            pts = "".join(f'<Coordinate Order="{i}" X="{700 + 180 * np.cos(a):.1f}" Y="{400 + 180 * np.sin(a):.1f}"/>'
                          for i, a in enumerate(ang))
            Path(mask_path).write_text(
                '<?xml version="1.0"?><ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" '
                f'PartOfGroup="_0"><Coordinates>{pts}</Coordinates></Annotation></Annotations></ASAP_Annotations>')
        label = tumour_label if tum.any() else normal_label
        split = "test" if sid in {"t1", "n1", "gone"} else "val"
        rows.append(f"{sid},{slide_path},{label},{split},{mask_path}")
        _write_tiles(ws / "tiles" / f"{sid}.h5", sid, slide_path, coords)
        if sid == "nopred":
            continue
        frac = np.array([tum[y:y + TILE_L0, x:x + TILE_L0].mean() for x, y in coords])
        # the tile truth `histokd label` writes beside the features (contract 6), read by the report
        write_instance_labels(instance_labels_path(Workspace(ws), FEATURES, sid), frac, 0.5)
        p = np.clip(0.1 + 0.8 * frac + rng.normal(0, 0.05, len(coords)), 0, 1).astype(np.float32)
        pix = tum[::16, ::16] if sid == "t1" else None
        bag = _write_prediction(ws / "predictions" / MODEL / f"{sid}.h5", sid, coords, p, classes, pix)
        pred = classes[int(np.argmax(bag))]
        bag_rows.append([sid, split, label, pred, *(f"{v:.4f}" for v in bag)])
    (ws / "cohort.csv").write_text("\n".join(rows) + "\n")
    pdir = ws / "predictions" / MODEL
    header = ["slide_id", "split", "label", "pred", *(f"prob_{c}" for c in classes)]
    import csv

    with open(pdir / "bags.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(header)
        wr.writerows(bag_rows)
    (pdir / "metrics.json").write_text(json.dumps(
        {"threshold": 0.5, "features": FEATURES, "test": {"bag_auc": {"value": 0.91, "low": 0.8, "high": 1.0}, "n": 3}}))
    return Run(ws, MODEL, classes)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Run:
    return make_run(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def built_report(run_dir):
    """The report of the standard workspace, built once per module: (Run, index.html path)."""
    from histokd.pipeline.report import report

    index = report(run_dir.root, run_dir.model_id, top_k=3, n_boot=200)
    return run_dir, index


@pytest.fixture
def make_workspace():
    """The :func:`make_run` builder, for tests that need their own (e.g. malicious) workspace."""
    return make_run
