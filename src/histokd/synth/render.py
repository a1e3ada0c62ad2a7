"""Draw one synthetic slide from its layout: H&E RGB and the pixel-aligned paired multiplex image.

Colour follows the Beer-Lambert law: RGB = I0 * exp(-(OD_H * h + OD_E * e)) with per-slide stain
vectors h, e. OD_E is eosin (stroma with wavy collagen fibres, smoother cytoplasm in tumour), OD_H is
stamped nuclei plus a faint background. Level-0 work is element-wise numpy on float32; everything
smooth is drawn on the coarse grid and upsampled, and local effects (lesion cytoplasm, blur) are
computed on their bounding boxes only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from histokd.synth.layout import COARSE_UM, PEN_COLOURS, SlideLayout, pen_coverage, upsample
from histokd.synth.nuclei import (
    IMMUNE_MARKER,
    TUMOUR_MARKER,
    KernelBank,
    NucleusType,
    build_bank,
    jittered_points,
    nucleus_types,
    stamp,
)
from histokd.synth.params import SynthParams

PAIRED_CHANNELS = ("nuclear", "tumour_marker", "immune_marker", "stroma")
"""Channel names of the paired modality, in order (DAPI-like, pan-CK-like, CD45-like, stroma)."""

# Normal nuclei are kept inside special regions with these probabilities (stroma within tumour etc.).
_NORMAL_KEEP = {"tumour": 0.15, "subtle": 0.15, "lymph": 0.2, "lookalike": 0.2}
_SCATTERED_LYMPH_DENSITY = 0.35  # lymphocytes per 1000 µm² everywhere in the tissue


@dataclass
class RenderedSlide:
    """Pixels of one slide: ``rgb`` [S, S, 3] uint8 and ``paired`` [S, S, 4] uint8 (see PAIRED_CHANNELS)."""

    rgb: np.ndarray
    paired: np.ndarray
    nuclei: dict[str, int] = field(default_factory=dict)  # count drawn per cell type
    blur_sigma_um: float = 0.0


def _place_nuclei(lay: SlideLayout, types: dict[str, NucleusType], tissue: np.ndarray,
                  rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Nucleus centres (x, y) level-0 px per cell type, inside tissue, by region priority."""
    per_px2 = lay.mpp * lay.mpp / 1000.0  # (nuclei per 1000 µm²) -> nuclei per px²
    s = lay.size
    inside = {
        "tumour": [b for b in lay.lesions if b.kind != "subtle"],
        "subtle": [b for b in lay.lesions if b.kind == "subtle"],
        "lymph": lay.lymph,
        "lookalike": lay.lookalikes,
    }

    def member(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        m = np.zeros(x.shape, dtype=bool)
        for b in inside[kind]:
            m |= b.contains(x, y)
        return m

    def in_tissue(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return tissue[np.minimum(y.astype(np.int64), s - 1), np.minimum(x.astype(np.int64), s - 1)]

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    # normal nuclei everywhere, thinned by the smooth cellularity field and inside special regions
    x, y = jittered_points(rng, (0, 0, s, s), types["normal"].density * 1.6 * per_px2)
    keep = in_tissue(x, y)
    x, y = x[keep], y[keep]
    cell = lay.cellularity[np.minimum((y / lay.step + 0.5).astype(np.int64), lay.cellularity.shape[0] - 1),
                           np.minimum((x / lay.step + 0.5).astype(np.int64), lay.cellularity.shape[1] - 1)]
    p_keep = cell / 1.6
    for kind, pk in _NORMAL_KEEP.items():
        if inside[kind]:
            p_keep = np.where(member(kind, x, y), np.minimum(p_keep, pk), p_keep)
    keep = rng.random(x.shape, dtype=np.float32) < p_keep
    out["normal"] = (x[keep], y[keep])

    # region types: higher-priority regions win where they overlap (tumour > lymph > look-alike)
    priority = [k for k in ("tumour", "subtle", "lymph", "lookalike") if k in types]
    for i, kind in enumerate(priority):
        xs_, ys_ = [], []
        for b in inside[kind]:
            bx, by = jittered_points(rng, b.bbox(s), types[kind].density * per_px2)
            k = b.contains(bx, by) & in_tissue(bx, by)
            for other in priority[:i]:
                if inside[other]:
                    k &= ~member(other, bx, by)
            xs_.append(bx[k])
            ys_.append(by[k])
        if kind == "lymph":  # scattered lymphocytes in all tissue (and infiltrating tumour)
            bx, by = jittered_points(rng, (0, 0, s, s), _SCATTERED_LYMPH_DENSITY * per_px2)
            k = in_tissue(bx, by)
            xs_.append(bx[k])
            ys_.append(by[k])
        out[kind] = (np.concatenate(xs_) if xs_ else np.zeros(0, np.float32),
                     np.concatenate(ys_) if ys_ else np.zeros(0, np.float32))
    return out


def _fibres(lay: SlideLayout, rng: np.random.Generator) -> np.ndarray:
    """Eosin texture in ~[0.3, 1]: two families of wavy collagen bundles (~8 and ~13 µm apart) whose
    contrast varies smoothly, times a fine (1 µm) grain. [S, S] float32."""
    s = lay.size
    xs = np.arange(s, dtype=np.float32)
    warp = upsample(lay.warp, lay.step, s)
    out = np.zeros((s, s), dtype=np.float32)
    for period_um, dtheta, wscale, weight in ((8.0, 0.0, 1.0, 0.7), (13.0, 1.1, 0.6, 0.3)):
        k = np.float32(2 * math.pi * lay.mpp / period_um)
        ang = lay.fibre_angle + dtheta
        ph = warp * np.float32(wscale)
        ph += (xs * (k * np.float32(math.cos(ang))))[None, :]
        ph += (xs * (k * np.float32(math.sin(ang))))[:, None]
        np.sin(ph, out=ph)
        ph += 1.0
        ph *= 0.5
        ph *= ph  # thin bands
        ph *= np.float32(weight)
        out += ph
    # fibres run in interrupted bundles (~6 µm patches) instead of an endless grating
    bstep = max(1, round(6.0 / lay.mpp))
    bundle = rng.standard_normal((-(-s // bstep) + 2,) * 2, dtype=np.float32)
    bundle = np.clip(0.55 + 0.6 * bundle, 0.1, 1.0)
    out *= upsample(bundle, bstep, s)
    contrast = upsample(np.clip(1.6 - lay.cellularity, 0.2, 1.0), lay.step, s)  # fewer fibres where cellular
    out -= 0.35
    out *= contrast
    out += 0.7
    for grain_um, amp in ((1.0, 0.10), (4.0, 0.18)):  # fine grain and broken, mottled bundles
        gstep = max(1, round(grain_um / lay.mpp))
        grain = rng.standard_normal((-(-s // gstep) + 2,) * 2, dtype=np.float32)
        out *= 1.0 + np.float32(amp) * upsample(grain, gstep, s)
    return out


def _soft_regions(blobs: list, s: int, edge: float) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """Soft membership windows [(bbox, [h, w] float32)] of blobs (no level-0 full-size array)."""
    out = []
    for b in blobs:
        x0, y0, x1, y1 = b.bbox(s, edge)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        out.append(((x0, y0, x1, y1), b.soft(xx, yy, edge)))
    return out


def _fold_field(lay: SlideLayout) -> np.ndarray | None:
    """Coarse [g, g] fold band strength in [0, 1], or None."""
    f = lay.fold
    if f is None:
        return None
    gy, gx = np.meshgrid(lay.grid, lay.grid, indexing="ij")
    t = (gx - f.x0) * math.cos(f.angle) + (gy - f.y0) * math.sin(f.angle)
    n = -(gx - f.x0) * math.sin(f.angle) + (gy - f.y0) * math.cos(f.angle) - f.bend * t * t
    edge = lay.px(COARSE_UM)
    return np.clip((f.width / 2 - np.abs(n)) / edge + 0.5, 0, 1).astype(np.float32)


def _pen_field(lay: SlideLayout) -> np.ndarray | None:
    """Coarse [g, g] opacity of the edge pen mark in [0, 1], or None."""
    pen = lay.pen
    cov = None if pen is None else pen_coverage(lay, pen)
    if cov is None:
        return None
    return (cov * pen.opacity).astype(np.float32)  # type: ignore[union-attr]


def _ink_transmission(lay: SlideLayout) -> list[np.ndarray] | None:
    """Coarse [g, g] float32 transmission per RGB channel of the strokes across the tissue, or None."""
    out = None
    for pen in lay.ink:
        cov = pen_coverage(lay, pen)
        if cov is None:
            continue
        a = cov * pen.opacity
        t = [1.0 - a * (1.0 - PEN_COLOURS[pen.colour][c]) for c in range(3)]
        out = t if out is None else [o * tc for o, tc in zip(out, t)]
    return None if out is None else [o.astype(np.float32) for o in out]


def render(p: SynthParams, lay: SlideLayout, rng: np.random.Generator) -> RenderedSlide:
    """Render the H&E slide and its paired multiplex image for ``lay`` (level-0 side ``lay.size``)."""
    s = lay.size
    st = lay.stain
    assert st is not None
    types = nucleus_types(p)
    tissue_lvl = upsample(lay.tissue_level, lay.step, s)
    tissue = tissue_lvl > 0
    del tissue_lvl

    hn, markers, counts = _nuclei(p, lay, types, tissue, rng)

    # --- eosin: stroma fibres; tumour replaces fibres by smoother, denser cytoplasm -------------
    eos = _fibres(lay, rng)
    lesion_soft = _soft_regions(lay.lesions, s, lay.px(15.0))
    # tumour cells push the fibres aside; with weak atypia some stroma shows through, so the lesion is
    # not a texture-free disc that gives it away
    # each lesion at its own grade (subtle lesions: subtle_atypia)
    grade = [p.subtle_atypia if b.kind == "subtle" else p.atypia for b in lay.lesions]
    # look-alikes that mimic tumour (lookalike_mimicry > 0) take a share of the same cytoplasm change
    mimic_soft = (_soft_regions(lay.lookalikes, s, lay.px(15.0)) if p.lookalike_mimicry > 0 else [])
    regions = [(r, a, 1.0) for r, a in zip(lesion_soft, grade)] + [(r, p.atypia, p.lookalike_mimicry)
                                                                   for r in mimic_soft]
    for ((x0, y0, x1, y1), w), a, share in regions:
        win = eos[y0:y1, x0:x1]
        wr = w * (np.float32(0.4 + 0.6 * a) * np.float32(share))
        win[:] = win * (1 - wr) + wr * np.float32(0.75 - 0.1 * a)
    eos *= np.float32(0.5 * st.e_amount)
    eos *= tissue
    stroma_signal = eos.copy()  # for the paired stroma channel, before nuclei and folds
    for (x0, y0, x1, y1), w in lesion_soft:
        stroma_signal[y0:y1, x0:x1] *= 1 - 0.8 * w
    eos *= 1.0 - 0.4 * np.minimum(hn, 1.0)  # nuclei displace cytoplasm

    # --- hematoxylin: nuclei + faint background (more basophilic cytoplasm in tumour) ----------
    hem = hn * np.float32(st.h_amount)
    hem += tissue * np.float32(0.03 * st.h_amount)
    for ((x0, y0, x1, y1), w), a, share in regions:
        hem[y0:y1, x0:x1] += w * tissue[y0:y1, x0:x1] * np.float32(0.08 * a * share * st.h_amount)

    fold = _fold_field(lay)
    if fold is not None:  # double thickness: up to ~1.9x the optical density
        f = upsample(fold, lay.step, s)
        f *= 0.9
        f += 1.0
        hem *= f
        eos *= f
        del f

    # --- colour ---------------------------------------------------------------------------
    noise = rng.standard_normal((s + 4, s + 4), dtype=np.float32)
    pen = _pen_field(lay)
    pen_a = upsample(pen, lay.step, s) if pen is not None else None
    ink_t = _ink_transmission(lay)
    blur_sigma_um = float(rng.uniform(1.5, 3.0))
    blur_soft = _soft_regions(lay.blurs, s, lay.px(30.0))
    rgb = np.empty((s, s, 3), dtype=np.uint8)
    for c in range(3):
        od = hem * np.float32(st.h[c])
        od += eos * np.float32(st.e[c])
        np.negative(od, out=od)
        ch = np.exp(od, out=od)
        ch *= np.float32(st.brightness * st.tint[c])
        for (x0, y0, x1, y1), w in blur_soft:
            win = ch[y0:y1, x0:x1]
            win[:] = win * (1 - w) + w * ndi.gaussian_filter(win, lay.px(blur_sigma_um))
        if pen_a is not None:
            ch *= 1.0 - pen_a * np.float32(1.0 - PEN_COLOURS[lay.pen.colour][c])  # type: ignore[union-attr]
        if ink_t is not None:  # ink over the tissue: its transmission multiplies the stained light
            ch *= upsample(ink_t[c], lay.step, s)
        ch += noise[2:2 + s, 2:2 + s] * np.float32(2.0)
        ch += 0.5
        np.clip(ch, 0, 255, out=ch)
        rgb[..., c] = ch
        del ch, od

    paired = _paired(hn, markers, stroma_signal, tissue, noise, np.float32(1.0 / (0.5 * st.e_amount)))
    return RenderedSlide(rgb, paired, counts, blur_sigma_um)


def _nuclei(p: SynthParams, lay: SlideLayout, types: dict, tissue: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, int]]:
    """Hematoxylin OD of the nuclei [s, s], the marker expression maps, and the nuclei per kind."""
    s = lay.size
    # --- nuclei -----------------------------------------------------------------------------
    banks: dict[str, KernelBank] = {k: build_bank(t, lay.mpp, rng) for k, t in types.items()}
    pad = max(b.max_radius for b in banks.values()) + 1
    hn = np.zeros((s + 2 * pad, s + 2 * pad), dtype=np.float32)  # hematoxylin OD of nuclei
    markers = {m: np.zeros_like(hn) for m in (TUMOUR_MARKER, IMMUNE_MARKER)}
    positions = _place_nuclei(lay, types, tissue, rng)
    counts = {}
    for kind, (xs, ys) in positions.items():
        t, bank = types[kind], banks[kind]
        n = len(xs)
        counts[kind] = n
        if n == 0:
            continue
        which = rng.integers(0, len(bank.nucleus), n)
        dark = np.clip(rng.normal(1.0, t.darkness_sd / t.darkness, n), 0.5, 1.6).astype(np.float32)
        stamp(hn, pad, xs, ys, bank.nucleus, bank.radius, which, dark)
        if t.marker is not None:
            expr = rng.uniform(*t.expression, n).astype(np.float32)
            if kind in ("tumour", "subtle"):
                expr[rng.random(n) < p.marker_dropout] = 0.0
            stamp(markers[t.marker], pad, xs, ys, bank.cell, bank.radius, which, expr)
    hn = hn[pad:pad + s, pad:pad + s]
    markers = {m: a[pad:pad + s, pad:pad + s] for m, a in markers.items()}
    return hn, markers, counts


def _paired(hn: np.ndarray, markers: dict[str, np.ndarray], stroma_signal: np.ndarray, tissue: np.ndarray,
            noise: np.ndarray, stroma_gain: np.float32) -> np.ndarray:
    """The paired multiplex image [s, s, 4]: nuclear, tumour marker, immune marker, stroma."""
    s = hn.shape[0]
    paired = np.empty((s, s, 4), dtype=np.uint8)
    # dark background with no noise (as in fluorescence), tissue autofluorescence + read noise
    autofluo = tissue * np.float32(10.0)
    noise_amp = tissue * np.float32(4.0)
    sources = {
        0: hn * np.float32(1.0 / 0.8),
        1: markers[TUMOUR_MARKER],
        2: markers[IMMUNE_MARKER],
        3: stroma_signal * stroma_gain,
    }
    for c, src in sources.items():
        ch = np.minimum(src, 1.0) * np.float32(225.0)
        ch += autofluo
        ch += noise[c:c + s, 4 - c:4 - c + s] * noise_amp
        ch += 0.5
        np.clip(ch, 0, 255, out=ch)
        paired[..., c] = ch
    return paired
