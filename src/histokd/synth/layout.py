"""Geometry of one synthetic slide: tissue pieces, lesions, look-alike regions, confounders, stain.

The layout is cheap (no level-0 pixels): smooth fields live on a coarse grid of :data:`COARSE_UM` µm
cells and regions are analytic blobs in level-0 px, so the tumour mask can be evaluated exactly at
any downsample and the burden of a preset can be measured without rendering a slide.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

from histokd.synth.params import SynthParams

COARSE_UM = 8.0
"""Cell size of the coarse grid on which smooth fields (tissue, cellularity, fibre warp) are drawn, µm."""

# Optical-density vectors of hematoxylin and eosin (RGB), the usual Macenko reference values.
H_REF = np.array([0.5626, 0.7201, 0.4062], dtype=np.float32)
E_REF = np.array([0.2159, 0.8012, 0.5581], dtype=np.float32)
# The direction a scanning site moves the stains in (SynthParams.site_shift): haematoxylin bluer, eosin
# redder, a darker and more saturated scan, as between two labs' stainers and scanners.
SITE_H_DIR = np.array([0.25, -0.05, -0.35], dtype=np.float32)
SITE_E_DIR = np.array([-0.15, 0.10, -0.30], dtype=np.float32)
PEN_COLOURS = {  # transmission of the ink per RGB channel
    "green": (0.35, 0.62, 0.45),
    "blue": (0.30, 0.38, 0.72),
    "black": (0.22, 0.22, 0.25),
}


@dataclass(frozen=True)
class Blob:
    """An irregular star-shaped region: radius(θ) = radius * (1 + Σ_k amps[k] cos((k+2)θ + phases[k])).

    ``cx, cy, radius`` are level-0 px.
    """

    kind: str
    cx: float
    cy: float
    radius: float
    amps: tuple[float, ...]
    phases: tuple[float, ...]

    @property
    def max_radius(self) -> float:
        return self.radius * (1.0 + float(np.sum(np.abs(self.amps))))

    def boundary(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance from the centre, boundary radius in that direction), both px, same shape as x."""
        dx = np.asarray(x, dtype=np.float32) - np.float32(self.cx)
        dy = np.asarray(y, dtype=np.float32) - np.float32(self.cy)
        theta = np.arctan2(dy, dx)
        rr = np.ones_like(theta)
        for k, (a, ph) in enumerate(zip(self.amps, self.phases)):
            rr += np.float32(a) * np.cos((k + 2) * theta + np.float32(ph))
        return np.hypot(dx, dy), rr * np.float32(self.radius)

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Boolean membership of level-0 points (x, y)."""
        d, rr = self.boundary(x, y)
        return d <= rr

    def soft(self, x: np.ndarray, y: np.ndarray, edge: float) -> np.ndarray:
        """Membership in [0, 1] with a linear ramp ``edge`` px wide across the boundary."""
        d, rr = self.boundary(x, y)
        return np.clip((rr - d) / np.float32(max(edge, 1e-3)) + 0.5, 0.0, 1.0).astype(np.float32)

    def bbox(self, size: int, margin: float = 0.0) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) level-0 px, clipped to the slide."""
        r = self.max_radius + margin
        return (max(0, int(self.cx - r)), max(0, int(self.cy - r)),
                min(size, int(math.ceil(self.cx + r)) + 1), min(size, int(math.ceil(self.cy + r)) + 1))

    def to_json(self, mpp: float) -> dict:
        d = asdict(self)
        d["radius_um"] = self.radius * mpp
        return d


@dataclass(frozen=True)
class Fold:
    """A tissue fold: a slightly bent band through (x0, y0) at ``angle`` rad, ``width`` px wide."""

    x0: float
    y0: float
    angle: float
    bend: float  # px of sideways bend per px² along the band
    width: float


@dataclass(frozen=True)
class Pen:
    """A pen stroke: polyline ``points`` [(x, y)] in level-0 px, ``width`` px, RGB transmission ``colour``."""

    points: tuple[tuple[float, float], ...]
    width: float
    colour: str
    opacity: float


@dataclass(frozen=True)
class Stain:
    """Per-slide stain: OD vectors (unit RGB), amounts, illumination (0-255) and background tint."""

    h: tuple[float, float, float]
    e: tuple[float, float, float]
    h_amount: float
    e_amount: float
    brightness: float
    tint: tuple[float, float, float]


@dataclass
class SlideLayout:
    """Everything about one slide that is decided before drawing pixels."""

    size: int
    mpp: float
    step: int  # level-0 px per coarse cell (~COARSE_UM µm)
    tissue_level: np.ndarray  # [g, g] float32, > 0 inside tissue (bilinear-upsampled then thresholded)
    cellularity: np.ndarray  # [g, g] float32 multiplier of normal nuclear density, ~0.5-1.5
    warp: np.ndarray  # [g, g] float32 phase warp of the collagen fibres, radians
    fibre_angle: float
    lesions: list[Blob] = field(default_factory=list)
    lymph: list[Blob] = field(default_factory=list)
    lookalikes: list[Blob] = field(default_factory=list)
    blurs: list[Blob] = field(default_factory=list)
    fold: Fold | None = None
    pen: Pen | None = None
    stain: Stain | None = None
    ink: list[Pen] = field(default_factory=list)  # strokes across the tissue (SynthParams.pen_over_tissue)

    @property
    def pens(self) -> list[Pen]:
        """Every pen stroke of the slide: the edge mark (if any), then the strokes across the tissue."""
        return ([self.pen] if self.pen is not None else []) + list(self.ink)

    def px(self, um: float) -> float:
        """µm -> level-0 px."""
        return um / self.mpp

    @property
    def grid(self) -> np.ndarray:
        """Level-0 coordinates of the coarse samples along one axis, [g] float32."""
        return (np.arange(self.tissue_level.shape[0], dtype=np.float32) * np.float32(self.step))

    def tissue_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Tissue membership of level-0 points, by bilinear interpolation of the coarse level field."""
        return sample_bilinear(self.tissue_level, np.asarray(x) / self.step, np.asarray(y) / self.step) > 0

    def tumour_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether level-0 points lie in a lesion (tissue not checked)."""
        out = np.zeros(np.broadcast(x, y).shape, dtype=bool)
        for b in self.lesions:
            out |= b.contains(x, y)
        return out

    def tumour_mask(self, downsample: int) -> np.ndarray:
        """Ground-truth tumour mask [ceil(size/ds), ceil(size/ds)] bool: lesion ∩ tissue at pixel centres."""
        n = -(-self.size // downsample)
        c = (np.arange(n, dtype=np.float32) + 0.5) * downsample
        yy, xx = np.meshgrid(c, c, indexing="ij")
        return self.tumour_at(xx, yy) & self.tissue_at(xx, yy)

    def tissue_mask(self, downsample: int) -> np.ndarray:
        n = -(-self.size // downsample)
        c = (np.arange(n, dtype=np.float32) + 0.5) * downsample
        yy, xx = np.meshgrid(c, c, indexing="ij")
        return self.tissue_at(xx, yy)

    def ink_mask(self, downsample: int) -> np.ndarray:
        """Ground-truth ink mask [ceil(size/ds)]² bool: pixel centres that lie within half the width of a pen
        stroke (coverage >= 0.5 of the stroke's soft edge; the opacity does not matter), any pen."""
        n = -(-self.size // downsample)
        out = np.zeros((n, n), dtype=bool)
        c = (np.arange(n, dtype=np.float32) + 0.5) * downsample
        yy, xx = np.meshgrid(c, c, indexing="ij")
        for pen in self.pens:
            cov = pen_coverage(self, pen)
            if cov is not None:
                out |= sample_bilinear(cov.astype(np.float32), xx / self.step, yy / self.step) >= 0.5
        return out

    def tumour_fraction(self, downsample: int = 16) -> float:
        """Fraction of the tissue area that is tumour (measured on the mask grid)."""
        tissue = self.tissue_mask(downsample)
        return float((self.tumour_mask(downsample).sum()) / max(1, tissue.sum()))


# ----------------------------------------------------------------------------------------------
# smooth fields


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation, [H, W] float32."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    return (f / (f.std() + 1e-6)).astype(np.float32)


def sample_bilinear(field: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``field`` [h, w] at fractional column ``u`` and row ``v`` (clamped at edges)."""
    h, w = field.shape
    u = np.clip(np.asarray(u, dtype=np.float32), 0, w - 1.001)
    v = np.clip(np.asarray(v, dtype=np.float32), 0, h - 1.001)
    j, i = u.astype(np.int64), v.astype(np.int64)
    fu, fv = u - j, v - i
    top = field[i, j] * (1 - fu) + field[i, j + 1] * fu
    bot = field[i + 1, j] * (1 - fu) + field[i + 1, j + 1] * fu
    return (top * (1 - fv) + bot * fv).astype(np.float32)


def upsample(field: np.ndarray, step: int, size: int) -> np.ndarray:
    """Bilinear upsampling of a coarse field (sample (i, j) sits at level-0 px (i*step, j*step)) to
    the level-0 grid [size, size] float32.

    ``step`` is an integer, so interpolation weights repeat in every cell and the work is pure
    broadcasting (no gather, no BLAS): fast, and bit-identical whatever the thread count.
    """
    g = field.shape[0]
    need = -(-size // step) + 1
    if g < need:
        raise ValueError(f"coarse field {field.shape} too small for size {size} at step {step}")
    f = field[:need, :need].astype(np.float32, copy=False)
    w = (np.arange(step, dtype=np.float32) / np.float32(step))
    # rows: [need-1, step, need] -> [(need-1)*step, need]
    # a + (b - a) * w: the differences are coarse, so only two level-0-sized passes per axis
    rows = (f[1:] - f[:-1])[:, None, :] * w[None, :, None]
    rows += f[:-1, None, :]
    rows = rows.reshape(-1, need)[:size]
    out = (rows[:, 1:] - rows[:, :-1])[:, :, None] * w[None, None, :]
    out += rows[:, :-1, None]
    out = out.reshape(size, -1)
    return out if out.shape[1] == size else np.ascontiguousarray(out[:, :size])


def pen_coverage(lay: SlideLayout, pen: Pen) -> np.ndarray | None:
    """Coarse [g, g] float64 coverage of a pen stroke in [0, 1] (1 under the stroke, a one-cell soft edge;
    times ``pen.opacity`` it is the ink's opacity), or None for a stroke of fewer than two points."""
    if len(pen.points) < 2:
        return None
    g = lay.tissue_level.shape[0]
    hit = np.zeros((g, g), dtype=bool)
    pts = np.asarray(pen.points, dtype=np.float64)
    for (xa, ya), (xb, yb) in zip(pts[:-1], pts[1:]):
        n = int(max(2, math.hypot(xb - xa, yb - ya) / lay.step * 2))
        t = np.linspace(0, 1, n)
        j = np.clip(np.rint((xa + t * (xb - xa)) / lay.step).astype(int), 0, g - 1)
        i = np.clip(np.rint((ya + t * (yb - ya)) / lay.step).astype(int), 0, g - 1)
        hit[i, j] = True
    dist_px = ndi.distance_transform_edt(~hit) * lay.step
    return np.clip((pen.width / 2 - dist_px) / lay.step + 0.5, 0, 1)


# ----------------------------------------------------------------------------------------------
# layout


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    """Log-uniform: as many 40-80 µm lesions as 200-400 µm ones, like the micro/macro-metastasis mix."""
    return float(math.exp(rng.uniform(math.log(lo_hi[0]), math.log(lo_hi[1]))))


def _count(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _blob(rng: np.random.Generator, kind: str, cx: float, cy: float, radius: float,
          irregularity: float = 0.3) -> Blob:
    amps = tuple(float(rng.uniform(0, irregularity) / (k + 1)) for k in range(5))
    phases = tuple(float(rng.uniform(0, 2 * math.pi)) for _ in range(5))
    return Blob(kind, float(cx), float(cy), float(radius), amps, phases)


def _tissue_field(rng: np.random.Generator, p: SynthParams, g: int, cells_per_um: float) -> np.ndarray:
    """Coarse tissue level [g, g] float32 (> 0 inside): union of noisy ellipses with a few holes."""
    t = np.arange(g, dtype=np.float32) / np.float32(g - 2)  # slide spans [0, 1] (grid overhangs it)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    n = max(1, _count(rng, p.tissue_pieces))
    env = np.full((g, g), -10.0, dtype=np.float32)
    for _ in range(n):
        cx, cy = rng.uniform(0.25, 0.75, size=2)
        rx, ry = rng.uniform(0.16, 0.3, size=2) / math.sqrt(n) * 1.2
        a = rng.uniform(0, math.pi)
        u = ((xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)) / rx
        v = (-(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)) / ry
        env = np.maximum(env, 1.0 - (u * u + v * v))
    fld = env + 0.35 * smooth_noise(rng, (g, g), 80 * cells_per_um) + 0.12 * smooth_noise(
        rng, (g, g), 25 * cells_per_um)
    # push the field down smoothly near the slide border so no piece is cut by it
    edge = np.minimum(np.minimum(xx, 1 - xx), np.minimum(yy, 1 - yy))
    wobble = 0.03 * smooth_noise(rng, (g, g), 60 * cells_per_um)  # so the taper leaves no straight edge
    fld = (fld - 6.0 * np.clip((0.12 - edge + wobble) / 0.12, 0, None) ** 2).astype(np.float32)
    thr = float(np.quantile(fld, 1.0 - _uniform(rng, p.tissue_fraction)))
    level = fld - thr
    # small holes (vessels, fat) inside the tissue
    # the hole field is smooth and min-combined, so holes have round edges after upsampling
    level = np.minimum(level, 2.4 - smooth_noise(rng, (g, g), 12 * cells_per_um))
    # drop specks: components below 1% of the tissue
    lab, nl = ndi.label(level > 0)
    if nl > 1:
        sizes = ndi.sum(np.ones_like(level), lab, index=np.arange(1, nl + 1))
        small = np.isin(lab, 1 + np.flatnonzero(sizes < 0.01 * sizes.sum()))
        level = np.where(small, -1.0, level)
    return level.astype(np.float32)


def _place(rng: np.random.Generator, dist_um: np.ndarray, step: int, radius_um: float,
           avoid: list[Blob], mpp: float, kind: str, inside: float = 0.6) -> Blob | None:
    """A blob of ``radius_um`` centred in tissue >= ``inside * radius`` from its edge (shrunk to fit)."""
    max_d = float(dist_um.max())
    if max_d <= 0:
        return None
    r = min(radius_um, max_d / inside * 0.95) if inside > 0 else radius_um
    cand = np.argwhere(dist_um >= inside * r)
    for _ in range(20):
        i, j = cand[rng.integers(len(cand))]
        cx = (j + rng.uniform(-0.5, 0.5)) * step
        cy = (i + rng.uniform(-0.5, 0.5)) * step
        if all(math.hypot(cx - b.cx, cy - b.cy) > b.radius + r / mpp for b in avoid):
            break
    return _blob(rng, kind, cx, cy, r / mpp)


def _pen(rng: np.random.Generator, level: np.ndarray, step: int, mpp: float, size: int) -> Pen | None:
    """A wobbly pen stroke starting on the background 50-300 µm outside the tissue."""
    outside = ndi.distance_transform_edt(level <= 0) * step * mpp
    cand = np.argwhere((outside > 50) & (outside < 300))
    if len(cand) == 0:
        return None
    i, j = cand[rng.integers(len(cand))]
    x, y = j * step, i * step
    # head along the tissue edge: perpendicular to the gradient of the distance
    gy, gx = np.gradient(outside)
    heading = math.atan2(gx[i, j], -gy[i, j]) + rng.normal(0, 0.3)
    pts = _wobbly_stroke(rng, (x, y), heading, int(rng.integers(30, 70)), 25.0 / mpp, size)
    colour = str(rng.choice(list(PEN_COLOURS)))
    return Pen(tuple(pts), _uniform(rng, (50.0, 130.0)) / mpp, colour, _uniform(rng, (0.6, 0.9)))


def _wobbly_stroke(rng: np.random.Generator, start: tuple[float, float], heading: float, steps: int, seg: float,
                   size: int) -> list[tuple[float, float]]:
    """A pen's path from ``start``: up to ``steps`` segments of ``seg`` px whose heading drifts (a smoothed random
    turn per step), ending where it would leave the ``size`` px slide."""
    x, y = start
    pts = [start]
    turn = 0.0
    for _ in range(steps):
        turn = 0.8 * turn + rng.normal(0, 0.06)
        heading += turn
        x, y = x + seg * math.cos(heading), y + seg * math.sin(heading)
        if not (0 <= x < size and 0 <= y < size):
            break
        pts.append((float(x), float(y)))
    return pts


INK_COLOURS = ("black", "blue", "green")
"""Colours of the strokes across the tissue (SynthParams.pen_over_tissue)."""
INK_OPACITY = (0.4, 1.0)
_INK_STREAM = 0x1A4  # spawn key of the ink's own random stream


def _ink_rng(rng: np.random.Generator) -> np.random.Generator:
    """A stream of its own for the strokes across the tissue, derived from the slide's seed without drawing
    from ``rng``: the slide (layout and pixels) is the one drawn without ink, plus the ink."""
    ss = getattr(rng.bit_generator, "seed_seq", None)
    if not isinstance(ss, np.random.SeedSequence):  # no seed sequence: a jumped copy (rng is not advanced)
        return np.random.Generator(rng.bit_generator.jumped())
    return np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, _INK_STREAM)))


def _ink_across(rng: np.random.Generator, level: np.ndarray, step: int, mpp: float, size: int) -> Pen | None:
    """A wobbly stroke across the tissue: it starts >= 100 µm inside it (or anywhere in it when the tissue is
    thin), heads anywhere, 0.5-1.5 mm long; black, blue or green, 50-130 µm wide, opacity 0.4-1."""
    inside = ndi.distance_transform_edt(level > 0) * step * mpp
    cand = np.argwhere(inside > 100)
    if len(cand) == 0:
        cand = np.argwhere(inside > 0)
    if len(cand) == 0:
        return None
    i, j = cand[rng.integers(len(cand))]
    x, y = float(j * step), float(i * step)
    heading = rng.uniform(0, 2 * math.pi)
    pts = _wobbly_stroke(rng, (x, y), heading, int(rng.integers(20, 60)), 25.0 / mpp, size)
    colour = str(rng.choice(INK_COLOURS))
    return Pen(tuple(pts), _uniform(rng, (50.0, 130.0)) / mpp, colour, _uniform(rng, INK_OPACITY))


def _stain(rng: np.random.Generator, spread: float, shift: float = 0.0) -> Stain:
    """One slide's stain: the references moved by ``shift`` along the site direction (the same for every
    slide of a cohort), then spread per slide. ``shift=0`` draws exactly what it drew before the knob."""

    def vec(ref: np.ndarray) -> tuple[float, float, float]:
        v = np.abs(ref + rng.normal(0, spread, 3).astype(np.float32))
        v = v / np.linalg.norm(v)
        return (float(v[0]), float(v[1]), float(v[2]))

    return Stain(
        h=vec(H_REF + shift * SITE_H_DIR),
        e=vec(E_REF + shift * SITE_E_DIR),
        h_amount=float(math.exp(rng.normal(0, 1.5 * spread) + 0.3 * shift)),
        e_amount=float(math.exp(rng.normal(0, 1.5 * spread) + 0.4 * shift)),
        brightness=float(np.clip(243 - 25 * shift + rng.normal(0, 60 * spread), 190, 252)),
        tint=tuple(float(1 - abs(rng.normal(0, 0.25 * spread))) for _ in range(3)),  # type: ignore[arg-type]
    )


def make_layout(p: SynthParams, mpp: float, positive: bool, rng: np.random.Generator) -> SlideLayout:
    """Decide the geometry of one slide (level-0 side ``p.size`` px at ``mpp`` µm/px)."""
    step = max(1, round(COARSE_UM / mpp))
    g = -(-p.size // step) + 2
    cells_per_um = 1.0 / (step * mpp)
    level = _tissue_field(rng, p, g, cells_per_um)
    cellularity = np.clip(1.0 + 0.3 * smooth_noise(rng, (g, g), 40 * cells_per_um), 0.4, 1.6)
    # large smooth swirls plus some finer waviness of the collagen bundles
    warp = (70.0 * smooth_noise(rng, (g, g), 150 * cells_per_um)
            + 14.0 * smooth_noise(rng, (g, g), 40 * cells_per_um))
    lay = SlideLayout(p.size, mpp, step, level, cellularity.astype(np.float32), warp.astype(np.float32),
                      float(rng.uniform(0, math.pi)))
    dist_um = ndi.distance_transform_edt(level > 0) / cells_per_um

    if positive:
        for k in range(max(1, _count(rng, p.lesion_count))):
            kind = "tumour"
            if k > 0 and p.subtle_fraction > 0 and rng.random() < p.subtle_fraction:
                kind = "subtle"  # a lesion of low grade (tumour heterogeneity)
            b = _place(rng, dist_um, step, _log_uniform(rng, p.lesion_radius_um), lay.lesions, mpp, kind,
                       0.5)
            if b is not None:
                lay.lesions.append(b)
        # keep the burden within max_tumour_fraction by shrinking every lesion
        for _ in range(30):
            if lay.tumour_fraction(32) <= p.max_tumour_fraction:
                break
            lay.lesions = [Blob(b.kind, b.cx, b.cy, b.radius * 0.9, b.amps, b.phases) for b in lay.lesions]
    for _ in range(_count(rng, p.lymph_regions)):
        b = _place(rng, dist_um, step, _uniform(rng, p.lymph_radius_um), lay.lesions + lay.lymph, mpp,
                   "lymph")
        if b is not None:
            lay.lymph.append(b)
    for _ in range(int(rng.poisson(p.lookalike_rate))):
        b = _place(rng, dist_um, step, _uniform(rng, p.lookalike_radius_um),
                   lay.lesions + lay.lymph + lay.lookalikes, mpp, "lookalike")
        if b is not None:
            lay.lookalikes.append(b)
    if rng.random() < p.blur_prob:
        for _ in range(int(rng.integers(1, 3))):
            b = _place(rng, dist_um, step, _uniform(rng, (80.0, 250.0)), [], mpp, "blur", 0.0)
            if b is not None:
                lay.blurs.append(b)
    if rng.random() < p.fold_prob:
        cand = np.argwhere(dist_um > 0)
        i, j = cand[rng.integers(len(cand))]
        lay.fold = Fold(float(j * step), float(i * step), float(rng.uniform(0, math.pi)),
                        float(rng.normal(0, 2e-4) * mpp), _uniform(rng, (40.0, 160.0)) / mpp)
    if rng.random() < p.pen_prob:
        lay.pen = _pen(rng, level, step, mpp, p.size)
    lay.stain = _stain(rng, p.stain_spread, p.site_shift)
    if p.pen_over_tissue > 0:  # its own stream: nothing above (nor the rendering) changes
        ink = _ink_rng(rng)
        if ink.random() < p.pen_over_tissue:
            strokes = (_ink_across(ink, level, step, mpp, p.size) for _ in range(int(ink.integers(1, 3))))
            lay.ink = [s for s in strokes if s is not None]
    return lay
