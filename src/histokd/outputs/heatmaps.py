"""Heatmaps: tile probabilities over the slide thumbnail, with a colour bar and ground-truth contour.

Drawn with matplotlib's object API (``Figure`` + Agg canvas, no pyplot state), so rendering is safe in
worker threads and never opens a window.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histokd.workspace import atomic_path

#: Colour of the ground-truth contour and of the predicted pixel mask.
GT_COLOUR = "#00e5ff"
MASK_COLOUR = "#ff00ff"


@dataclass
class Overlay:
    """A bool mask ``[h, w]`` covering the whole slide at ``downsample`` level-0 px per mask px."""

    mask: np.ndarray
    downsample: float


def tile_value_grid(
    coords: np.ndarray,
    patch_size_level0: float,
    values: np.ndarray,
    thumb_shape: tuple[int, int],
    scale: tuple[float, float],
) -> np.ndarray:
    """Paint tile values onto the thumbnail grid.

    ``coords`` [N, 2] level-0 top-left (x, y); ``values`` [N]; ``thumb_shape`` (h, w) of the thumbnail;
    ``scale`` (sx, sy) level-0 px per thumbnail px. Returns float32 [h, w], NaN where no tile lies;
    where tiles overlap the maximum is kept (a tumour tile is never hidden by its neighbour).
    """
    h, w = thumb_shape
    sx, sy = scale
    grid = np.full((h, w), np.nan, dtype=np.float32)
    s = float(patch_size_level0)
    for (x, y), v in zip(np.asarray(coords, dtype=np.float64), np.asarray(values, dtype=np.float32)):
        c0, r0 = int(np.floor(x / sx)), int(np.floor(y / sy))
        c1 = max(int(np.ceil((x + s) / sx)), c0 + 1)
        r1 = max(int(np.ceil((y + s) / sy)), r0 + 1)
        cell = grid[max(r0, 0) : min(r1, h), max(c0, 0) : min(c1, w)]
        np.fmax(cell, v, out=cell)
    return grid


def resample_mask(mask: np.ndarray, downsample: float, thumb_shape: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """Nearest-neighbour resampling of a whole-slide mask at ``downsample`` onto the thumbnail grid."""
    h, w = thumb_shape
    sx, sy = scale
    rows = np.clip(((np.arange(h) + 0.5) * sy / downsample).astype(int), 0, mask.shape[0] - 1)
    cols = np.clip(((np.arange(w) + 0.5) * sx / downsample).astype(int), 0, mask.shape[1] - 1)
    return np.asarray(mask)[np.ix_(rows, cols)].astype(bool)


#: tile values up to FADE[0] are drawn transparent; opacity reaches its maximum at FADE[1]
FADE = (0.1, 0.5)


def fade_alpha(values: np.ndarray, alpha: float = 0.75, fade: tuple[float, float] = FADE) -> np.ndarray:
    """Opacity of a heatmap cell of value ``values`` (in [0, 1]): 0 up to ``fade[0]``, linear to ``alpha`` at
    ``fade[1]``, ``alpha`` above."""
    lo, hi = fade
    return alpha * np.clip((np.asarray(values, float) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)


def faded_colormap(cmap: str, alpha: float = 0.75, fade: tuple[float, float] = FADE, n: int = 256) -> Any:
    """``cmap`` with the opacity of :func:`fade_alpha` in its alpha channel (the colour bar shows it too)."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    base = colormaps[cmap].resampled(n)
    colours = base(np.linspace(0.0, 1.0, n))
    colours[:, 3] = fade_alpha(np.linspace(0.0, 1.0, n), alpha, fade)
    return ListedColormap(colours, name=f"{cmap}_faded")


def render_heatmap(
    thumbnail: np.ndarray,
    slide_dimensions: tuple[int, int],
    coords: np.ndarray,
    patch_size_level0: float,
    values: np.ndarray,
    *,
    ground_truth: Overlay | None = None,
    pixel_mask: Overlay | None = None,
    title: str = "",
    label: str = "tumour probability",
    cmap: str = "inferno",
    alpha: float = 0.75,
    fade: tuple[float, float] = FADE,
    dpi: int = 100,
) -> bytes:
    """Render one slide's heatmap and return it as PNG bytes.

    ``thumbnail`` [h, w, 3] uint8 RGB of the whole slide; ``slide_dimensions`` level-0 (W, H);
    ``values`` [N] in [0, 1] for the tiles at ``coords`` [N, 2] (level-0 top-left). Panel 1: the values
    over the thumbnail with a colour bar, and the ground-truth contour when given. Low values are
    transparent so that the tissue under them stays visible: opacity is 0 up to ``fade[0]``, rises linearly
    to ``alpha`` at ``fade[1]`` and stays there (:func:`fade_alpha`); the colour bar shows the same opacity
    and says so. Panel 2 (only with ``pixel_mask``): the predicted pixel mask over the thumbnail, with the
    same contour.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from histokd.outputs.plots import text_safe

    h, w = thumbnail.shape[:2]
    scale = (slide_dimensions[0] / w, slide_dimensions[1] / h)
    grid = tile_value_grid(coords, patch_size_level0, values, (h, w), scale)
    panels = 2 if pixel_mask is not None else 1
    width_in = 6.0 * panels + 1.2
    height_in = max(2.5, min(12.0, 6.0 * h / max(w, 1))) + 0.8
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    gt = resample_mask(ground_truth.mask, ground_truth.downsample, (h, w), scale) if ground_truth else None

    ax = axes[0]
    ax.imshow(thumbnail, interpolation="bilinear")
    cm = faded_colormap(cmap, alpha, fade)
    ax.imshow(np.ma.masked_invalid(grid), cmap=cm, vmin=0.0, vmax=1.0, interpolation="nearest")
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cm), ax=ax, fraction=0.046, pad=0.02)
    bar.set_label(text_safe(f"{label}\n(transparent below {fade[0]:g}, full colour from {fade[1]:g})"), fontsize=8)
    ax.set_title("tile predictions", fontsize=10)
    handles = []
    if gt is not None and gt.any():
        ax.contour(gt.astype(float), levels=[0.5], colors=[GT_COLOUR], linewidths=1.2)
        handles.append(Line2D([], [], color=GT_COLOUR, label="ground truth"))
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.7)

    if pixel_mask is not None:
        ax2 = axes[1]
        pm = resample_mask(pixel_mask.mask, pixel_mask.downsample, (h, w), scale)
        ax2.imshow(thumbnail, interpolation="bilinear")
        rgba = np.zeros((h, w, 4), dtype=np.float32)
        rgba[pm] = (1.0, 0.0, 1.0, 0.45)
        ax2.imshow(rgba, interpolation="nearest")
        ax2.set_title("pixel mask", fontsize=10)
        handles2 = [Line2D([], [], color=MASK_COLOUR, lw=6, alpha=0.45, label="predicted mask")]
        if gt is not None and gt.any():
            ax2.contour(gt.astype(float), levels=[0.5], colors=[GT_COLOUR], linewidths=1.2)
            handles2.append(Line2D([], [], color=GT_COLOUR, label="ground truth"))
        ax2.legend(handles=handles2, loc="lower right", fontsize=8, framealpha=0.7)
    for a in axes:
        a.set_axis_off()
    if title:
        fig.suptitle(text_safe(title), fontsize=11)  # labels and slide ids are user text, never mathtext
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
