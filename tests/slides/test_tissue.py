"""Tissue detection: blob found, background / pen marks / specks excluded, holes filled, user mask."""

from __future__ import annotations

import json

import numpy as np
from skimage.draw import disk, ellipse

from histokd.slides.reader import open_slide
from histokd.slides.tissue import TissueParams, detect_tissue, pen_mask, tissue_from_rgb
from slide_scene import BLOB, PEN_Y_UM

BG = (240, 240, 238)


def _thumb(pens: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A 400 x 400 px thumbnail at 8 µm/px: tissue ellipse (with a small hole), pens, specks."""
    rng = np.random.default_rng(0)
    img = np.empty((400, 400, 3), np.uint8)
    img[:] = BG
    truth = np.zeros((400, 400), bool)
    rr, cc = ellipse(200, 200, 120, 150, shape=truth.shape)
    truth[rr, cc] = True
    # H&E-ish texture: mix of eosin pink and hematoxylin purple
    h = rng.random((400, 400, 1))
    tissue_rgb = (1 - h) * np.array([225, 140, 190]) + h * np.array([120, 90, 170])
    img[truth] = tissue_rgb[truth].astype(np.uint8)
    rr, cc = disk((200, 200), 4)  # a 9-px wide lumen: filled (< max hole)
    img[rr, cc] = BG
    if pens:
        img[20:32, 40:360] = (77, 97, 184)  # blue ink
        img[340:350, 30:380] = (89, 158, 115)  # green ink
        img[100:300, 375:385] = (50, 50, 58)  # black ink
        img[60:240, 330:338] = (150, 160, 200)  # blue ink over the tissue edge, partly transparent
    img[370:372, 10:12] = (200, 120, 180)  # a speck of debris (4 px)
    return img, truth


def test_tissue_found_and_pen_speck_excluded():
    img, truth = _thumb()
    tissue, pen = tissue_from_rgb(img, 8.0)
    inter = (tissue & truth).sum()
    assert inter / truth.sum() > 0.93  # most tissue found (minus the ink-covered edge)
    assert (tissue & ~truth).sum() < 0.01 * truth.sum()  # nothing outside
    assert not tissue[20:32, 40:360].any() and not tissue[340:350].any() and not tissue[100:300, 375:].any()
    assert not tissue[60:240, 330:338].any()  # ink over tissue is not tissue
    assert tissue[200, 200]  # small lumen filled
    assert not tissue[368:374, 8:14].any()  # speck removed
    assert pen[25, 200] and pen[345, 200] and pen[200, 380] and not pen[200, 150]


def test_he_never_pen():
    img, _ = _thumb(pens=False)
    assert not pen_mask(img).any()


def test_blank_slide_has_no_tissue():
    img = np.full((300, 300, 3), BG, np.uint8)
    img = np.clip(img + np.random.default_rng(0).integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
    tissue, _ = tissue_from_rgb(img, 8.0)
    assert not tissue.any()


def test_large_hole_is_kept_out():
    img, truth = _thumb(pens=False)
    rr, cc = disk((200, 200), 40)  # 640 µm wide lumen: not tissue
    img[rr, cc] = BG
    tissue, _ = tissue_from_rgb(img, 8.0, TissueParams())
    assert not tissue[200, 200]


def test_detect_tissue_on_slide_and_user_mask(slides, tmp_path):
    with open_slide(slides.s05) as s:
        t = detect_tissue(s)
        assert t.downsample == s.dimensions[0] / t.mask.shape[1]
        h, w = t.mask.shape
        um = s.dimensions[0] * s.mpp / w
        yy, xx = (np.mgrid[0:h, 0:w] + 0.5) * um
        truth = ((xx - BLOB["cx"]) / BLOB["rx"]) ** 2 + ((yy - BLOB["cy"]) / BLOB["ry"]) ** 2 <= 1
        iou = (t.mask & truth).sum() / (t.mask | truth).sum()
        assert iou > 0.95
        pen_rows = slice(int(PEN_Y_UM[0] / um), int(PEN_Y_UM[1] / um))
        assert not t.mask[pen_rows].any() and t.pen[pen_rows].any()
        # a GeoJSON square replaces detection
        sq = [[0, 0], [200, 0], [200, 200], [0, 200], [0, 0]]
        p = tmp_path / "tissue.geojson"
        p.write_text(json.dumps({"type": "Polygon", "coordinates": [sq]}))
        u = detect_tissue(s, tissue_mask=p)
        assert u.source == str(p) and u.pen is None
        assert u.mask[: int(200 / u.downsample) - 1, : int(200 / u.downsample) - 1].all()
        assert u.mask.sum() <= (200 / u.downsample + 1) ** 2


def test_tinted_background_is_not_pen_ink():
    # a pale greenish glass background (G > R + margin but unsaturated) must not be taken for ink,
    # or the whole slide is masked out (seen on a synthetic slide with background [230, 241, 237])
    import numpy as np

    from histokd.slides.tissue import TissueParams, pen_mask, tissue_from_rgb

    rgb = np.zeros((200, 200, 3), np.uint8)
    rgb[:] = (230, 241, 237)
    rgb[50:150, 50:150] = (180, 120, 170)  # H&E-like tissue
    rgb[10:20, 10:190] = (40, 140, 90)  # a green pen stroke
    pen = pen_mask(rgb, TissueParams())
    assert not pen[100, 5] and not pen[195, 195]
    assert pen[15, 100]
    tissue, _ = tissue_from_rgb(rgb, 8.0, TissueParams(min_area_um2=1000))
    assert tissue[100, 100] and not tissue[195, 195]


def test_faint_stain_on_tinted_glass_is_tissue():
    """A washed-out slide: stroma barely more saturated than green-tinted glass, dense dark nuclei. Otsu
    alone splits nuclei from stroma + glass (no tissue); the background bound finds the stroma."""
    rng = np.random.default_rng(1)
    img = np.empty((400, 400, 3), np.uint8)
    img[:] = (232, 241, 238)  # glass, saturation ~0.04
    truth = np.zeros((400, 400), bool)
    rr, cc = ellipse(200, 200, 120, 150, shape=truth.shape)
    truth[rr, cc] = True
    stroma = np.array((222, 205, 215)) + rng.normal(0, 4, (400, 400, 3))  # saturation ~0.078 (glass 0.037)
    nucleus = np.array((110, 81, 127)) + rng.normal(0, 25, (400, 400, 1))
    nuclei = truth & (rng.random((400, 400)) < 0.4)
    img[truth] = np.clip(stroma[truth], 0, 255)
    img[nuclei] = np.clip(nucleus[nuclei], 0, 255)
    tissue, _ = tissue_from_rgb(img, 8.0, TissueParams())
    iou = (tissue & truth).sum() / (tissue | truth).sum()
    assert iou > 0.9, iou
    blank = np.empty_like(img)
    blank[:] = (232, 241, 238)
    assert not tissue_from_rgb(blank, 8.0, TissueParams())[0].any()


def test_teal_hematoxylin_nuclei_are_not_ink():
    """Dense nuclei stained a teal-leaning hematoxylin (G > R, saturated pixel by pixel) on pale stroma,
    at 1 µm/px: pixel-wise they pass the coloured-ink rule and, dilated, used to mask out all the tissue
    (a synthetic slide with a drifted stain lost every tile). A blue ink blob beside it stays ink."""
    rng = np.random.default_rng(3)
    img = np.empty((400, 400, 3), np.uint8)
    img[:] = (243, 244, 242)
    truth = np.zeros((400, 400), bool)
    rr, cc = ellipse(170, 200, 130, 150, shape=truth.shape)
    truth[rr, cc] = True
    img[truth] = (232, 205, 215)  # pale pink stroma
    for _ in range(4000):  # ~7 µm nuclei, teal, dense (touching)
        y, x = rng.integers(0, 400, 2)
        rr, cc = disk((y, x), 3.5, shape=truth.shape)
        keep = truth[rr, cc]
        img[rr[keep], cc[keep]] = (95, 125, 140)
    img[350:390, 260:360] = (125, 140, 197)  # blue ink on the glass
    tissue, pen = tissue_from_rgb(img, 1.0, TissueParams(min_area_um2=1000))
    assert (tissue & truth).sum() > 0.9 * truth.sum()
    assert not pen[truth].any()
    assert pen[370, 310] and not tissue[350:390, 260:360].any()
