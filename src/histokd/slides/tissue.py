"""Thumbnail-level tissue detection: saturation / Otsu, pen-mark removal, morphology, minimum area.

The mask is computed on a low-resolution read of the slide (``TissueParams.mpp``, 8 µm/px by default;
finer for small slides so that the mask keeps >= 512 px on its longer side). Steps:

1. **pen marks**: marker ink is not a mixture of hematoxylin and eosin. Both stains absorb green at
   least as strongly as red, so in H&E the green channel never exceeds the red one; blue and green
   inks do (G > R + ``pen_green_margin``). Black ink is darker than any stained tissue at this
   resolution (max channel < ``pen_dark_max``). The pen mask is dilated by ``pen_dilate_um`` to take
   the ink's soft edges too; ink blobs under ``pen_min_area_um2`` (chroma artefacts of JPEG at sharp
   stain edges) are ignored. **Ink over tissue** (``ink_od``): ink adds its own optical density to the
   stain's, and at the thumbnail's resolution stained tissue is always a mixture of hematoxylin and eosin,
   so ink shows as optical density with little eosin, more hematoxylin-like or beyond, or out of the
   hematoxylin-eosin plane (black and green ink). A linear score of four features of the colour averaged
   over ``ink_smooth_um`` (see :func:`ink_score`), calibrated on synthetic slides with black, blue and green
   ink at opacity 0.4-1 over tissue, marks it; it also finds semi-transparent black ink on the glass, which
   the dark rule misses. Its mask is dilated by ``ink_dilate_um`` only (the score already reaches the
   stroke's edge). Where it would mark more than ``ink_max_fraction`` of the stained pixels, the stain
   itself is off the reference (a blue-shifted hematoxylin) and the rule is skipped for that slide.
2. **tissue**: HSV saturation above an Otsu threshold (clipped to ``[sat_min, sat_max]`` so that a blank
   slide yields nothing and a dense one does not lose pale stroma), on pixels that are not pen.
3. **morphology**: closing (``closing_um``) joins fragmented stroma, holes smaller than
   ``max_hole_um2`` are filled (large lumens and fat stay out), objects smaller than ``min_area_um2`` are
   dropped; the pen mask is removed last so that closing cannot bridge over ink.

A user mask (PNG or GeoJSON, see :func:`histokd.slides.masks.load_mask`) replaces the detection.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from histokd.slides.masks import load_mask
from histokd.slides.reader import Slide


@dataclass(frozen=True)
class TissueParams:
    """Tissue detection settings (physical units, so they mean the same at any slide resolution)."""

    mpp: float = 8.0
    """µm/px of the detection thumbnail (upper bound; small slides use a finer one)."""
    min_side_px: int = 512
    """The thumbnail keeps at least this many px on its longer side."""
    sat_min: float = 0.05
    sat_max: float = 0.25
    smooth_um: float = 16.0
    """Median filter on saturation before thresholding, so that nuclei and pale stroma read as one tissue."""
    bg_margin: float = 0.02
    """A pixel this much more saturated than a clean, uniform glass background is tissue (pale slides)."""
    bg_mad_factor: float = 5.0
    """... or ``bg_mad_factor`` median absolute deviations of the background, whichever is larger."""
    closing_um: float = 16.0
    opening_um: float = 8.0
    min_area_um2: float = 20_000.0
    max_hole_um2: float = 20_000.0
    remove_pen: bool = True
    pen_green_margin: int = 8
    pen_min_saturation: float = 0.2
    """Ink is saturated; a faintly green- or blue-tinted glass background (G > R but pale) is not ink."""
    pen_smooth_um: float = 32.0
    """Colour is averaged over this window before the ink rules (see :func:`pen_mask`)."""
    pen_dark_max: int = 80
    pen_dilate_um: float = 24.0
    pen_min_area_um2: float = 1_500.0
    """Ink blobs smaller than this are compression artefacts at stain edges, not pen strokes."""
    ink_od: bool = False
    """Also find ink by its optical density (ink over tissue, semi-transparent ink): :func:`ink_score` > 0. Off by
    default: with the fixed reference stain vectors it takes tissue whose hematoxylin drifts towards R = G for
    ink (docs/slides.md, tissue section)."""
    ink_weights: tuple[float, float, float, float, float] = (14.0, -21.0, 36.0, 9.0, -4.0)
    """Weights of :func:`ink_score`: hematoxylin share, eosin share, out-of-plane share, ln |OD|, bias."""
    ink_min_od: float = 0.15
    """Ink has at least this optical density (norm of the RGB OD; ink at opacity 0.4: ~0.4-0.65; the glass's
    noise: < 0.05): the score is not used on fainter pixels, whose colour direction is noise."""
    ink_max_fraction: float = 0.5
    """When the score marks more than this share of the stained pixels it is the stain (e.g. hematoxylin
    shifted towards blue), not ink, and the optical-density rule is not used on that slide."""
    ink_smooth_um: float = 16.0
    """Colour averaging window of :func:`ink_score`."""
    ink_dilate_um: float = 4.0
    ink_slide_plane: bool = True
    """Measure the out-of-plane share against the slide's own hematoxylin-eosin plane (:func:`slide_stain_vectors`
    on its stained pixels farther than ``ink_grow_um`` from anything the reference score calls ink) instead of
    the reference plane: a hematoxylin that drifts towards R = G stays in its slide's plane, where it read as
    black ink before."""
    ink_seed_score: float = 0.0
    """With a value > 0, ink is a score > 0 within ``ink_grow_um`` of a score > this (hysteresis; 0: off).
    Dense nuclei next to a stroke score just above 0 and grow the stroke's blob into the tissue; seeds stop
    that (tuning cohorts: 70 of 72 slides within 5 % at 7), but faint ink (opacity 0.4) has no seeds and is
    then missed (tests/slides/test_ink_over_tissue.py), so it is off."""
    ink_grow_um: float = 16.0
    """Reach of the hysteresis seeds, and the margin around reference-scored ink that the slide's plane leaves out."""

    def to_dict(self) -> dict:
        """The settings as stored with a tile grid (its resume key). The optical-density ink rule's settings are
        left out while it is off, so grids tiled before the rule existed still resume."""
        d = asdict(self)
        if not self.ink_od:
            d = {k: v for k, v in d.items() if not k.startswith("ink_")}
        return d


@dataclass
class TissueMask:
    """A tissue mask over the whole slide.

    ``mask`` bool ``[h, w]``; ``downsample`` = level-0 px per mask px (slide level-0 width / w);
    ``pen`` bool ``[h, w]`` (ink found, or None for a user mask); ``thumbnail`` RGB ``[h, w, 3]`` uint8
    at the mask's resolution (for QC); ``source`` "auto" or the user mask's path.
    """

    mask: np.ndarray
    downsample: float
    thumbnail: np.ndarray
    pen: np.ndarray | None = None
    source: str = "auto"

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def detection_mpp(slide: Slide, params: TissueParams) -> float:
    """µm/px of the detection thumbnail for ``slide``: ``params.mpp`` unless the slide is small."""
    long_um = max(slide.dimensions) * slide.mpp
    return max(slide.mpp, min(params.mpp, long_um / params.min_side_px))


def _dilate(mask: np.ndarray, r: float) -> np.ndarray:
    """Dilation by a disk of radius ``r`` px (Euclidean distance transform: O(N) for any radius)."""
    if r <= 0 or not mask.any():
        return mask
    return ndi.distance_transform_edt(~mask) <= r


def _erode(mask: np.ndarray, r: float) -> np.ndarray:
    """Erosion by a disk of radius ``r`` px; outside the image counts as background."""
    if r <= 0 or not mask.any():
        return mask
    pad = int(np.ceil(r)) + 1
    return (ndi.distance_transform_edt(np.pad(mask, pad)) > r)[pad:-pad, pad:-pad]


def _closing(mask: np.ndarray, r: float) -> np.ndarray:
    pad = int(np.ceil(r)) + 1
    return _erode(_dilate(np.pad(mask, pad), r), r)[pad:-pad, pad:-pad]


def _opening(mask: np.ndarray, r: float) -> np.ndarray:
    return _dilate(_erode(mask, r), r)


def _drop_small_objects(mask: np.ndarray, max_px: int) -> np.ndarray:
    """Remove 8-connected components of ``mask`` with at most ``max_px`` pixels."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes > max_px
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_px: int) -> np.ndarray:
    """Fill background components of at most ``max_px`` px that do not touch the image border."""
    labels, n = ndi.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes <= max_px
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]


def pen_mask(rgb: np.ndarray, params: TissueParams = TissueParams(), mpp: float | None = None) -> np.ndarray:
    """Pixels of marker ink: bool ``[h, w]`` from RGB ``[h, w, 3]`` uint8 (before dilation).

    With ``mpp`` the colour is first averaged over ``pen_smooth_um`` (box filter): ink is a uniform saturated
    colour, while tissue mixes nuclei with stroma. Without it, dense nuclei stained a teal-leaning
    hematoxylin (G > R, saturated) pass the coloured-ink rule pixel by pixel, the blobs they form exceed
    ``pen_min_area_um2``, and the dilated "ink" swallows the tissue (seen on a synthetic slide with a
    drifted stain); their average with the pale stroma is well under ``pen_min_saturation``.
    """
    a = rgb.astype(np.float32)
    if mpp is not None and params.pen_smooth_um > 0:
        size = max(3, round(params.pen_smooth_um / mpp) | 1)
        a = ndi.uniform_filter(a, size=(size, size, 1), mode="nearest")
    r, g = a[..., 0], a[..., 1]
    hi = a.max(axis=-1)
    sat = (hi - a.min(axis=-1)) / np.maximum(hi, 1)
    coloured_ink = (g > r + params.pen_green_margin) & (sat > params.pen_min_saturation)
    black_ink = a.max(axis=-1) < params.pen_dark_max
    return coloured_ink | black_ink


# Optical-density vectors of hematoxylin and eosin (RGB), the usual Macenko reference values.
_H_OD = np.array([0.5626, 0.7201, 0.4062])
_E_OD = np.array([0.2159, 0.8012, 0.5581])


def optical_density(rgb: np.ndarray, glass: np.ndarray, params: TissueParams = TissueParams(),
                    mpp: float | None = None) -> np.ndarray:
    """``OD = -ln((rgb + 1) / (glass + 1))`` (clipped at 0) of the colour averaged over ``ink_smooth_um``."""
    a = rgb.astype(np.float32)
    if mpp is not None and params.ink_smooth_um > 0:
        size = max(3, round(params.ink_smooth_um / mpp) | 1)
        a = ndi.uniform_filter(a, size=(size, size, 1), mode="nearest")
    return np.maximum(-np.log((a + 1.0) / (np.asarray(glass, np.float32) + 1.0)), 0.0)


def slide_stain_vectors(od: np.ndarray, min_od: float = 0.15, percentile: float = 1.0,
                        min_pixels: int = 200) -> tuple[np.ndarray, np.ndarray] | None:
    """The hematoxylin and eosin optical-density vectors (unit, RGB) of stained pixels ``od`` [N, 3], in the
    manner of Macenko et al. (2009): the plane of the two main directions of the pixels with |OD| >=
    ``min_od``, and the two directions at the ``percentile`` / 100 - ``percentile`` ends of the pixels' angles
    in it; hematoxylin is the one that absorbs more red. ``None`` with fewer than ``min_pixels`` pixels or
    a degenerate plane."""
    od = od[np.linalg.norm(od, axis=-1) >= min_od]
    if len(od) < min_pixels:
        return None
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, [2, 1]]  # the two largest
    plane = plane * np.where(plane.sum(0) < 0, -1.0, 1.0)  # both pointing into positive OD
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [percentile, 100.0 - percentile])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    if (v1 < 0).any() and (v2 < 0).any() or abs(float(v1 @ v2)) > 0.995:
        return None
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)
    return h / np.linalg.norm(h), e / np.linalg.norm(e)


def ink_score(rgb: np.ndarray, glass: np.ndarray, params: TissueParams = TissueParams(),
              mpp: float | None = None, stains: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Ink score ``[h, w]`` float32 of RGB ``[h, w, 3]`` (> 0: ink), given the glass colour ``glass`` (RGB).

    Optical density ``OD = -ln((rgb + 1) / (glass + 1))`` (clipped at 0) of the colour averaged over
    ``ink_smooth_um`` is written ``OD = |OD| (a_h h + a_e e + r n)`` with the reference hematoxylin and
    eosin vectors h, e and the unit normal n of their plane; pixels with ``|OD| < ink_min_od`` score -inf,
    the others
    ``w_h a_h + w_e a_e + w_r r + w_d ln|OD| + b`` (``ink_weights``). ``stains`` (the slide's own hematoxylin
    and eosin vectors): n is the normal of their plane instead (the shares a_h, a_e stay the reference
    vectors', on which the weights were fitted). Tissue at the thumbnail's resolution
    mixes both stains (a_e large); ink is eosin-poor (blue ink lies beyond hematoxylin, a_e < 0), out of
    the plane (black, green: r > 0) and dark. The weights are a logistic fit on thumbnails of synthetic
    slides (camelyon and hard presets, black / blue / green ink at opacity 0.4, 0.7, 1 over tissue; held-out
    slides: < 1 % of tissue pixels scored as ink, <= 2 % of ink at opacity 0.4 missed). A slide whose
    hematoxylin is shifted far towards blue (a second site's stain) reads as ink: give a tissue mask or set
    ``ink_od=False`` there.
    """
    return score_od(optical_density(rgb, glass, params, mpp), params, stains)


def score_od(od: np.ndarray, params: TissueParams = TissueParams(),
             stains: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """:func:`ink_score` of optical densities ``od`` [h, w, 3] (:func:`optical_density`)."""
    norm = np.linalg.norm(od, axis=-1) + 1e-6
    h, e = _H_OD / np.linalg.norm(_H_OD), _E_OD / np.linalg.norm(_E_OD)
    n = np.cross(*stains) if stains is not None else np.cross(h, e)
    n /= np.linalg.norm(n)
    unmix = np.linalg.pinv(np.stack([h, e], 1)).astype(np.float32)  # [2, 3]
    ahe = (od @ unmix.T) / norm[..., None]
    r = (od @ n.astype(np.float32)) / norm
    wh, we, wr, wd, b = params.ink_weights
    score = wh * ahe[..., 0] + we * ahe[..., 1] + wr * r + wd * np.log(norm) + b
    return np.where(norm >= params.ink_min_od, score, -np.inf).astype(np.float32)


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    if values.size < 2 or float(values.max() - values.min()) < 1e-6:
        return float("inf")
    return float(threshold_otsu(values))


def _background_threshold(sat: np.ndarray, params: TissueParams) -> float:
    """Saturation just above the glass: the histogram's mode (the background fills most thumbnails) plus
    ``max(bg_margin, bg_mad_factor * MAD)`` of the pixels around it. On a faintly stained slide the stroma is
    barely more saturated than the glass, and Otsu then splits nuclei from stroma + glass instead of tissue
    from glass; this bound catches that case. A noisy background gives a large MAD and leaves Otsu in charge.
    """
    if sat.size < 16:
        return float("inf")
    hist, edges = np.histogram(sat, bins=200, range=(0.0, 1.0))
    i = int(np.argmax(hist))
    mode = 0.5 * (edges[i] + edges[i + 1])
    near = sat[np.abs(sat - mode) < 0.05]
    mad = float(np.median(np.abs(near - np.median(near)))) if near.size else 0.0
    return float(mode + max(params.bg_margin, params.bg_mad_factor * mad))


def tissue_from_rgb(rgb: np.ndarray, mpp: float, params: TissueParams = TissueParams()) -> tuple[np.ndarray, np.ndarray]:
    """Tissue and pen masks (bool ``[h, w]`` each) from an RGB thumbnail ``[h, w, 3]`` at ``mpp`` µm/px."""
    from skimage.color import rgb2hsv

    sat = rgb2hsv(rgb)[..., 1]
    if params.smooth_um > 0:
        size = max(3, round(params.smooth_um / mpp) | 1)
        sat = ndi.median_filter(sat, size=size)
    if params.remove_pen:
        pen = _drop_small_objects(pen_mask(rgb, params, mpp), int(params.pen_min_area_um2 / (mpp * mpp)))
        pen = _dilate(pen, params.pen_dilate_um / mpp)
    else:
        pen = np.zeros(rgb.shape[:2], bool)
    candidates = sat[~pen]
    thr = float(np.clip(_otsu(candidates), params.sat_min, params.sat_max))
    thr = min(thr, _background_threshold(candidates, params))
    if params.remove_pen and params.ink_od:
        glass = ~(sat > thr) & ~pen
        if glass.sum() >= 16:
            colour = np.median(rgb[glass].reshape(-1, 3), axis=0)
            od = optical_density(rgb, colour, params, mpp)  # once: the smoothing is most of the scoring's cost
            score = score_od(od, params)
            if params.ink_slide_plane:
                clean = (sat > thr) & ~pen & ~_dilate(score > 0, params.ink_grow_um / mpp)
                stains = slide_stain_vectors(od[clean], params.ink_min_od)
                if stains is not None:
                    score = score_od(od, params, stains)
            cand = score > 0
            if params.ink_seed_score > 0:
                cand &= _dilate(score > params.ink_seed_score, params.ink_grow_um / mpp)
            ink = _drop_small_objects(cand, int(params.pen_min_area_um2 / (mpp * mpp)))
            stained = (sat > thr) | ink
            if (ink & stained).sum() <= params.ink_max_fraction * max(1, stained.sum()):
                pen = pen | _dilate(ink, params.ink_dilate_um / mpp)
    tissue = (sat > thr) & ~pen
    px_area = mpp * mpp
    if params.opening_um > 0:
        tissue = _opening(tissue, params.opening_um / mpp)
    if params.closing_um > 0:
        tissue = _closing(tissue, params.closing_um / mpp)
    if params.max_hole_um2 > 0:
        tissue = _fill_small_holes(tissue, int(params.max_hole_um2 / px_area))
    tissue &= ~pen
    if params.min_area_um2 > 0:
        tissue = _drop_small_objects(tissue, int(params.min_area_um2 / px_area))
    return tissue, pen


def detect_tissue(
    slide: Slide,
    params: TissueParams = TissueParams(),
    tissue_mask: str | os.PathLike[str] | None = None,
) -> TissueMask:
    """Tissue mask of ``slide``; a user mask file (PNG / GeoJSON / registered format) replaces detection.

    The returned mask's ``downsample`` is slide level-0 width / mask width.
    """
    mpp = detection_mpp(slide, params)
    thumb = slide.read_at_mpp(mpp)
    W = slide.dimensions[0]
    if tissue_mask is not None:
        mask, ds = load_mask(tissue_mask, slide.dimensions, downsample=W / thumb.shape[1])
        return TissueMask(mask=mask, downsample=ds, thumbnail=thumb, pen=None, source=str(Path(tissue_mask)))
    tissue, pen = tissue_from_rgb(thumb, mpp, params)
    return TissueMask(mask=tissue, downsample=W / tissue.shape[1], thumbnail=thumb, pen=pen, source="auto")
