"""A small workspace for the viewer tests (contracts 1, 4 and 7), written by hand.

Slides ``a`` (1504 x 1096 px: edges that are not multiples of the 254-px deep-zoom tiles) and ``b``
(700 x 900) at 0.5 µm/px; tiles 96 level-0 px on a lattice that starts at (32, 16); tissue masks at
downsample 16; ground truth ``a``: a disc and a rectangle as a PNG at downsample 8; ``b`` is normal (an
all-zero PNG). Model ``weno-t`` has teacher evidence (``instance_scores``) and two classes; model
``three`` has three classes, no evidence and a pixel mask (downsample 16, as a segmenter writes). ``bad`` is listed in the cohort but its slide file is missing;
its label is markup (``<img src=x onerror=alert(1)>``), which the page must show as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from histokd.synth.tiff import write_pyramid_tiff

MPP, TILE, ORIGIN, MASK_DS, TISSUE_DS = 0.5, 96, (32, 16), 8, 16
SIZES = {"a": (1504, 1096), "b": (700, 900)}
EVIL = "<img src=x onerror=alert(1)>"


@dataclass
class ViewerRun:
    root: Path
    truth: dict[str, np.ndarray]  # slide -> level-0 bool mask [H, W]


def truth_mask(sid: str) -> np.ndarray:
    w, h = SIZES[sid]
    yy, xx = np.mgrid[0:h, 0:w]
    if sid != "a":
        return np.zeros((h, w), bool)
    return ((xx - 1000) ** 2 + (yy - 600) ** 2 < 260**2) | ((xx >= 200) & (xx < 520) & (yy >= 160) & (yy < 400))


def _image(sid: str, rng: np.random.Generator) -> np.ndarray:
    w, h = SIZES[sid]
    img = np.full((h, w, 3), 246, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = ((xx - w / 2) / (0.47 * w)) ** 2 + ((yy - h / 2) / (0.47 * h)) ** 2 < 1
    img[tissue] = (230, 168, 200)
    img[tissue & truth_mask(sid)] = (110, 50, 150)
    return np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


def _coords(sid: str) -> np.ndarray:
    w, h = SIZES[sid]
    xs = np.arange(ORIGIN[0], w - TILE + 1, TILE)
    ys = np.arange(ORIGIN[1], h - TILE + 1, TILE)
    gx, gy = np.meshgrid(xs, ys)
    return np.column_stack([gx.ravel(), gy.ravel()]).astype(np.int64)


def _fraction(mask: np.ndarray, coords: np.ndarray) -> np.ndarray:
    return np.array([mask[y:y + TILE, x:x + TILE].mean() for x, y in coords], np.float32)


def _prediction(path: Path, sid: str, model: str, coords: np.ndarray, probs: np.ndarray, classes: list[str],
                positive: str, scores: np.ndarray | None, pixel: np.ndarray | None = None) -> list[float]:
    path.parent.mkdir(parents=True, exist_ok=True)
    bag = probs.max(axis=0)
    bag = (bag / bag.sum()).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["instance_probs"] = probs.astype(np.float32)
        f["coords"] = coords
        if scores is not None:
            f["instance_scores"] = scores.astype(np.float32)
        if pixel is not None:  # a segmenter's mask, 0/1 at downsample 16 (IFKD's layout)
            f.create_dataset("mask", data=pixel.astype(np.uint8)).attrs["mask_downsample"] = 16.0
        f.attrs.update(bag_probs=bag, classes=json.dumps(classes), positive_class=positive, model_id=model,
                       method="weno" if scores is not None else "abmil", patch_size_level0=float(TILE), slide_id=sid)
    return bag.tolist()


def make_viewer_run(root: Path) -> ViewerRun:
    rng = np.random.default_rng(1)
    ws = root / "run"
    (root / "slides").mkdir(parents=True)
    rows = ["slide_id,path,label,split,mask_path"]
    truth = {}
    bags: dict[str, list[list]] = {"weno-t": [], "three": []}
    for sid, (w, h) in SIZES.items():
        tum = truth_mask(sid)
        truth[sid] = tum
        slide = root / "slides" / f"{sid}.tiff"
        write_pyramid_tiff(slide, _image(sid, rng), mpp=MPP, n_levels=3, tile=256)
        mask_path = root / "slides" / f"{sid}_mask.png"
        Image.fromarray((tum[MASK_DS // 2::MASK_DS, MASK_DS // 2::MASK_DS] * 255).astype(np.uint8)).save(mask_path)
        label = "tumour" if tum.any() else "normal"
        rows.append(f"{sid},{slide},{label},{'test' if sid == 'a' else 'val'},{mask_path}")
        coords = _coords(sid)
        tiles = ws / "tiles" / f"{sid}.h5"
        tiles.parent.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:-(-h // TISSUE_DS), 0:-(-w // TISSUE_DS)]
        tissue = (((xx + 0.5) * TISSUE_DS - w / 2) / (0.47 * w)) ** 2 + (((yy + 0.5) * TISSUE_DS - h / 2) / (0.47 * h)) ** 2 < 1
        with h5py.File(tiles, "w") as f:
            f["coords"] = coords
            f["tissue"] = np.ones(len(coords), np.float32)
            f.create_dataset("tissue_mask", data=tissue.astype(np.uint8))
            f.attrs.update(patch_size=48, patch_size_level0=TILE, target_mpp=1.0, level0_mpp=MPP, overlap=0,
                           slide_id=sid, slide_path=str(slide), min_tissue=0.5, histokd_version="test",
                           slide_dimensions=np.array([w, h], np.int64), tissue_mask_downsample=float(TISSUE_DS))
        frac = _fraction(tum, coords)
        p = np.clip(0.05 + 0.9 * frac + rng.normal(0, 0.03, len(coords)), 0, 1)
        probs = np.column_stack([1 - p, p])
        scores = 4 * frac - 2 + rng.normal(0, 0.2, len(coords))
        bag = _prediction(ws / "predictions" / "weno-t" / f"{sid}.h5", sid, "weno-t", coords, probs,
                          ["normal", "tumour"], "tumour", scores)
        bags["weno-t"].append([sid, label, *bag])
        p3 = np.column_stack([1 - p, p * 0.3, p * 0.7])
        bag3 = _prediction(ws / "predictions" / "three" / f"{sid}.h5", sid, "three", coords, p3,
                           ["normal", "grade1", "tumour"], "tumour", None, pixel=tum[8::16, 8::16])
        bags["three"].append([sid, label, *bag3])
    rows.append(f"bad,{root / 'slides' / 'bad.tiff'},\"{EVIL}\",test,")
    (ws / "cohort.csv").write_text("\n".join(rows) + "\n")
    for model, classes in (("weno-t", ["normal", "tumour"]), ("three", ["normal", "grade1", "tumour"])):
        lines = ["slide_id,split,label,pred,prob_" + ",prob_".join(classes)]
        for sid, label, *bag in bags[model]:
            lines.append(f"{sid},,{label},{classes[int(np.argmax(bag))]}," + ",".join(f"{v:.4f}" for v in bag))
        (ws / "predictions" / model / "bags.csv").write_text("\n".join(lines) + "\n")
        (ws / "predictions" / model / "metrics.json").write_text(json.dumps({"threshold": 0.5}))
    return ViewerRun(ws, truth)
