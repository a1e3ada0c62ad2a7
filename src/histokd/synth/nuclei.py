"""Nuclei: cell types, precomputed banks of elliptical nucleus kernels, placement and stamping.

A nucleus is drawn by stamping (element-wise max) one of a few dozen precomputed kernels, built once
per slide at the slide's px scale, so sizes in µm are right whatever the mpp. Each kernel carries its
hematoxylin optical density (soft-edged ellipse with a perturbed boundary, chromatin texture, pale
vesicular centre and nucleolus for atypical nuclei) and a companion "cell" kernel (cytoplasm/membrane
around the nucleus) that lights the marker channels of the paired modality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from histokd.synth.params import SynthParams

TUMOUR_MARKER = 1  # paired channel index lit by tumour cells (pan-cytokeratin-like)
IMMUNE_MARKER = 2  # paired channel index lit by lymphocytes (CD45-like)


@dataclass(frozen=True)
class NucleusType:
    """Appearance of one cell type. Lengths in µm, density in nuclei per 1000 µm²."""

    name: str
    diameter_um: tuple[float, float]  # mean, sd of the equivalent diameter
    aspect: tuple[float, float]  # range of long/short axis ratio
    darkness: float  # peak hematoxylin optical density
    darkness_sd: float
    irregularity: float  # amplitude of boundary harmonics
    chromatin: float  # texture contrast, 0..1
    vesicular: float  # pale centre / dark rim, 0..1
    nucleoli: float  # probability of a visible nucleolus
    density: float
    marker: int | None  # paired channel lit by this cell type
    expression: tuple[float, float]  # marker expression range (0..1)
    cell_scale: float  # cell radius / nucleus radius


def nucleus_types(p: SynthParams) -> dict[str, NucleusType]:
    """The cell types of a cohort; tumour nuclei go from normal-like to atypical as ``atypia`` goes 0 -> 1."""
    d_mean, d_sd = p.normal_diameter_um
    tumour = _tumour_type("tumour", p, p.atypia)
    m = p.lookalike_mimicry

    def toward(benign: float, malignant: float) -> float:
        return benign + m * (malignant - benign)

    # benign look-alike: crowded, a bit enlarged, but regular and pale (hyperplasia-like); with mimicry it
    # takes the tumour's size, darkness and crowding while shape, chromatin and nucleoli stay benign
    lookalike = NucleusType("lookalike", (toward(d_mean + 1.6, tumour.diameter_um[0]), 0.6), (1.0, 1.35),
                            toward(0.62, tumour.darkness), 0.08, 0.05, 0.3, 0.1, 0.05,
                            toward(p.normal_density * 2.2, tumour.density), TUMOUR_MARKER, (0.05, 0.3), 1.5)
    out = {
        "normal": NucleusType("normal", (d_mean, d_sd), (1.0, 2.4), 0.55, 0.08, 0.04, 0.3, 0.0, 0.0,
                              p.normal_density, None, (0.0, 0.0), 1.8),
        "lymph": NucleusType("lymph", (6.0, 0.5), (1.0, 1.15), 0.95, 0.08, 0.03, 0.15, 0.0, 0.0,
                             14.0, IMMUNE_MARKER, (0.6, 1.0), 1.3),
        "lookalike": lookalike,
        "tumour": tumour,
    }
    if p.subtle_fraction > 0:  # only then: the kernel banks of the other presets stay as they were
        out["subtle"] = _tumour_type("subtle", p, p.subtle_atypia)
    return out


def _tumour_type(name: str, p: SynthParams, a: float) -> NucleusType:
    """Tumour nuclei at atypia ``a`` (0: normal-like, 1: large, dark, irregular, vesicular, nucleolated)."""
    d_mean, d_sd = p.normal_diameter_um
    return NucleusType(
        name,
        (d_mean + 6.5 * a, d_sd + 1.6 * a),
        (1.0, 1.3 + 0.6 * a),
        0.6 + 0.3 * a,
        0.08 + 0.1 * a,
        0.04 + 0.22 * a,
        0.3 + 0.35 * a,
        0.7 * a,
        0.6 * a,
        p.normal_density * (0.9 + 0.3 * a),
        TUMOUR_MARKER,
        (0.6, 1.0),
        1.6,
    )


@dataclass
class KernelBank:
    """Kernels of one cell type at one px scale: ``nucleus[k]`` and ``cell[k]`` are [2r+1, 2r+1] float32."""

    nucleus: list[np.ndarray]
    cell: list[np.ndarray]
    radius: np.ndarray  # [K] int, half-size of each kernel
    diameter_um: np.ndarray  # [K] float, equivalent diameter actually drawn
    max_radius: int


def build_bank(t: NucleusType, mpp: float, rng: np.random.Generator, n: int = 48) -> KernelBank:
    """``n`` random kernels of cell type ``t`` at ``mpp`` µm/px."""
    nuc, cell, radii, diams = [], [], [], []
    px = 1.0 / mpp
    for _ in range(n):
        d = float(np.clip(rng.normal(*t.diameter_um), 0.6 * t.diameter_um[0], 1.6 * t.diameter_um[0]))
        asp = float(rng.uniform(*t.aspect))
        a = d / 2 * math.sqrt(asp) * px
        b = d / 2 / math.sqrt(asp) * px
        r = int(math.ceil(max(a, b) * (1 + 2 * t.irregularity) * t.cell_scale)) + 2
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
        ang = rng.uniform(0, math.pi)
        u = xx * math.cos(ang) + yy * math.sin(ang)
        v = -xx * math.sin(ang) + yy * math.cos(ang)
        rn = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        theta = np.arctan2(v / b, u / a)
        bound = np.ones_like(rn)
        for k in range(2, 6):
            amp = rng.uniform(0, t.irregularity) / (k - 1)
            bound += amp * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
        minor = min(a, b)
        alpha = np.clip((bound - rn) * minor + 0.5, 0, 1)  # 1-px soft edge
        tex = ndi.gaussian_filter(rng.standard_normal(rn.shape).astype(np.float32), max(0.5, 0.4 * px))
        tex /= tex.std() + 1e-6
        val = 1.0 + 0.45 * t.chromatin * tex
        val *= 1.0 - 0.5 * t.vesicular * np.exp(-((rn / (0.65 * bound)) ** 2))  # pale centre, dark rim
        if rng.random() < t.nucleoli:
            cu, cv = rng.uniform(-0.35, 0.35, size=2)
            dn = np.hypot(u / a - cu, v / b - cv) * minor / px  # µm from the nucleolus
            val += 0.9 * np.exp(-((dn / 0.9) ** 2))
        k_nuc = (alpha * t.darkness * np.clip(val, 0.2, None)).astype(np.float32)
        c_alpha = np.clip((bound * t.cell_scale - rn) * minor + 0.5, 0, 1)
        k_cell = (c_alpha * (1.0 - 0.6 * alpha)).astype(np.float32)
        nuc.append(k_nuc)
        cell.append(k_cell)
        radii.append(r)
        diams.append(math.sqrt(float(alpha.sum())) * 2 / math.sqrt(math.pi) * mpp)
    return KernelBank(nuc, cell, np.array(radii), np.array(diams, dtype=np.float32), int(max(radii)))


def jittered_points(rng: np.random.Generator, box: tuple[int, int, int, int], density_px: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random points in ``box`` (x0, y0, x1, y1) px with ``density_px`` points per px²:
    one uniform point per grid cell, so nuclei do not clump like a Poisson process. Returns (x, y)."""
    x0, y0, x1, y1 = box
    s = 1.0 / math.sqrt(density_px)
    nx, ny = max(1, int(math.ceil((x1 - x0) / s))), max(1, int(math.ceil((y1 - y0) / s)))
    gy, gx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    jit = rng.random((2, ny, nx), dtype=np.float32)
    x = (x0 + (gx + jit[0]) * s).ravel()
    y = (y0 + (gy + jit[1]) * s).ravel()
    keep = (x < x1) & (y < y1)
    return x[keep], y[keep]


def stamp(canvas: np.ndarray, pad: int, xs: np.ndarray, ys: np.ndarray, kernels: list[np.ndarray],
          radii: np.ndarray, which: np.ndarray, scale: np.ndarray) -> None:
    """Stamp ``kernels[which[i]] * scale[i]`` centred at (xs[i], ys[i]) into ``canvas`` by element-wise max.

    ``canvas`` is [H + 2*pad, W + 2*pad] float32; ``pad`` >= every kernel radius, so no clipping is needed.
    """
    xi = np.rint(xs).astype(np.int64) + pad
    yi = np.rint(ys).astype(np.int64) + pad
    for x, y, k, s in zip(xi.tolist(), yi.tolist(), which.tolist(), scale.tolist()):
        r = int(radii[k])
        view = canvas[y - r:y + r + 1, x - r:x + r + 1]
        np.maximum(view, kernels[k] * np.float32(s), out=view)
