"""Overlay layers: rasters in level-0 coordinates, sampled at the pixel centres of a deep-zoom tile.

Two rasters cover every overlay:

* :class:`TileRaster`: one value per tile of a tile grid (tile probabilities, teacher evidence, the tile
  grid itself). Its cells are bounded by the sorted distinct tile edges (``x`` and ``x + size`` of every
  tile), so a cell boundary is a tile boundary, exactly, at any zoom; overlapping tiles show their maximum
  (as the report's heatmaps do). A lookup is two ``searchsorted`` calls per tile row / column, so a
  100,000-tile slide costs no more per deep-zoom tile than a small one.
* :class:`MaskRaster`: a pixel mask at a downsample (ground truth, tissue, a segmenter's mask): mask pixel
  ``(r, c)`` covers level-0 ``[c * d, (c + 1) * d) x [r * d, (r + 1) * d)`` (contract 3).

:func:`render_png` turns sampled values into a palette PNG with a colour map, a threshold and transparency
where a layer has no value (:func:`colourise`: the same as RGBA).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

# a tile raster with more cells than this (tiles off any lattice) has its edges snapped to size / 8
_MAX_CELLS = 16_000_000


class TileRaster:
    """Values of tiles ``[x, x + size) x [y, y + size)`` (level-0 px) on the cells of their distinct edges."""

    def __init__(self, coords: np.ndarray, size: float, values: np.ndarray) -> None:
        """``coords`` [N, 2] level-0 top-left (x, y); ``size`` tile side in level-0 px; ``values`` [N] float."""
        coords = np.asarray(coords, np.float64).reshape(-1, 2)
        values = np.asarray(values, np.float32).reshape(-1)
        size = float(size)
        x0, y0 = coords[:, 0], coords[:, 1]
        x1, y1 = x0 + size, y0 + size
        xe, ye = np.unique(np.concatenate([x0, x1])), np.unique(np.concatenate([y0, y1]))
        if len(xe) * len(ye) > _MAX_CELLS:  # tiles off any lattice: snap edges (alignment within size / 8)
            q = max(size / 8.0, 1.0)
            x0, y0, x1, y1 = (np.round(a / q) * q for a in (x0, y0, x1, y1))
            xe, ye = np.unique(np.concatenate([x0, x1])), np.unique(np.concatenate([y0, y1]))
        self.x_edges, self.y_edges = xe, ye
        grid = np.full((max(len(ye) - 1, 0), max(len(xe) - 1, 0)), np.nan, np.float32)
        if len(values):
            ix0, ix1 = np.searchsorted(xe, x0), np.searchsorted(xe, x1)
            iy0, iy1 = np.searchsorted(ye, y0), np.searchsorted(ye, y1)
            span_x, span_y = int((ix1 - ix0).max()), int((iy1 - iy0).max())
            for dy in range(span_y):  # overlapping tiles cover several cells: paint each, keep the maximum
                for dx in range(span_x):
                    sel = (ix0 + dx < ix1) & (iy0 + dy < iy1)
                    np.fmax.at(grid, (iy0[sel] + dy, ix0[sel] + dx), values[sel])
        self.grid = grid

    def cells(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cell column [w] and row [h] indices of level-0 points; -1 outside the grid."""
        cx = np.searchsorted(self.x_edges, xs, side="right") - 1
        cy = np.searchsorted(self.y_edges, ys, side="right") - 1
        cx[(cx < 0) | (cx >= self.grid.shape[1])] = -1
        cy[(cy < 0) | (cy >= self.grid.shape[0])] = -1
        return cx, cy

    def sample(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Values [h, w] at the level-0 points ``xs`` [w] x ``ys`` [h]; NaN where no tile."""
        cx, cy = self.cells(xs, ys)
        out = np.full((len(ys), len(xs)), np.nan, np.float32)
        if self.grid.size == 0:
            return out
        okx, oky = cx >= 0, cy >= 0
        out[np.ix_(oky, okx)] = self.grid[np.ix_(cy[oky], cx[okx])]
        return out

    def outline(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """[h, w] 1 on the pixels where a tile edge passes (cell index changes next to a tile), NaN elsewhere:
        the tile grid. Where tiles are under 4 px wide the grid is drawn as a fill."""
        cx, cy = self.cells(xs, ys)
        inside = ~np.isnan(self.sample(xs, ys))
        step_x = np.diff(xs[:2]).item() if len(xs) > 1 else 1.0
        widths = np.diff(self.x_edges)
        if len(widths) and np.median(widths) < 4 * step_x:
            return np.where(inside, 1.0, np.nan).astype(np.float32)
        edge_x = np.zeros(len(xs), bool)
        edge_x[1:] = cx[1:] != cx[:-1]
        edge_y = np.zeros(len(ys), bool)
        edge_y[1:] = cy[1:] != cy[:-1]
        ring = edge_y[:, None] | edge_x[None, :]
        near = inside.copy()  # an edge pixel next to a tile: its left / upper neighbour counts too
        near[:, 1:] |= inside[:, :-1]
        near[1:, :] |= inside[:-1, :]
        return np.where(ring & near, 1.0, np.nan).astype(np.float32)


class MaskRaster:
    """A pixel mask [h, w] (bool or 0..255) at ``downsample`` level-0 px per mask px."""

    def __init__(self, mask: np.ndarray, downsample: float, scale: float = 1.0) -> None:
        """``scale`` divides 0..255 masks to 0..1 (255 for uint8 masks, 1 for 0/1 masks)."""
        self.mask = np.asarray(mask)
        self.downsample = float(downsample)
        self.scale = float(scale)

    def sample(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Values [h, w] (0..1) at the level-0 points; NaN outside the mask or where it is 0."""
        h, w = self.mask.shape[:2]
        mx = np.floor(xs / self.downsample).astype(np.int64)
        my = np.floor(ys / self.downsample).astype(np.int64)
        okx, oky = (mx >= 0) & (mx < w), (my >= 0) & (my < h)
        out = np.full((len(ys), len(xs)), np.nan, np.float32)
        vals = self.mask[np.ix_(my[oky], mx[okx])].astype(np.float32) / self.scale
        vals[vals <= 0] = np.nan
        out[np.ix_(oky, okx)] = vals
        return out


    def outline(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """[h, w] 1 on the mask's inner boundary pixels (inside, with a 4-neighbour outside), NaN elsewhere: the
        contour. Neighbours beyond the tile's edge are sampled too, so contours are continuous across tiles."""
        if not len(xs) or not len(ys):
            return np.full((len(ys), len(xs)), np.nan, np.float32)
        sx = float(xs[1] - xs[0]) if len(xs) > 1 else 1.0
        sy = float(ys[1] - ys[0]) if len(ys) > 1 else sx
        ex = np.concatenate([[xs[0] - sx], xs, [xs[-1] + sx]])
        ey = np.concatenate([[ys[0] - sy], ys, [ys[-1] + sy]])
        inside = ~np.isnan(self.sample(ex, ey))
        core = inside[1:-1, 1:-1]
        all_in = inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
        return np.where(core & ~all_in, 1.0, np.nan).astype(np.float32)


@dataclass(frozen=True)
class Colours:
    """How a layer is drawn: ``lut`` [256, 3] uint8 colour map over 0..1, or one ``rgb`` colour; ``range`` of
    the values shown on the legend."""

    lut: np.ndarray | None = None
    rgb: tuple[int, int, int] | None = None

    def legend(self, n: int = 11) -> list[str]:
        """CSS colours of ``n`` evenly spaced values 0..1 (the page's colour bar)."""
        if self.lut is None:
            r, g, b = self.rgb or (0, 0, 0)
            return [f"#{r:02x}{g:02x}{b:02x}"] * 2
        idx = np.linspace(0, 255, n).round().astype(int)
        return ["#{:02x}{:02x}{:02x}".format(*(int(c) for c in self.lut[i])) for i in idx]


def colour_map(name: str) -> Colours:
    """A matplotlib colour map as a 256-entry lookup table."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    lut = (np.asarray(cmap(np.linspace(0, 1, 256)))[:, :3] * 255).round().astype(np.uint8)
    return Colours(lut=lut)


#: shown values are quantised to 0..LEVELS-1 (palette entries); entry LEVELS is transparent
LEVELS = 255


def value_index(values: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """[h, w] uint8 palette indices of ``values`` in 0..1: ``round(v * (LEVELS - 1))``, :data:`LEVELS` (transparent)
    where a value is NaN or below ``threshold``."""
    v = np.asarray(values, np.float32)
    hidden = np.isnan(v) | (v < threshold)
    idx = np.clip(np.nan_to_num(v, nan=0.0) * (LEVELS - 1) + 0.5, 0, LEVELS - 1).astype(np.uint8)
    idx[hidden] = LEVELS
    return idx


def palette(colours: Colours) -> np.ndarray:
    """[LEVELS + 1, 3] uint8: the colour of each value index (the last, transparent, is black)."""
    if colours.lut is not None:
        rgb = colours.lut[np.round(np.arange(LEVELS) * 255 / (LEVELS - 1)).astype(int)]
    else:
        rgb = np.tile(np.asarray(colours.rgb or (0, 0, 0), np.uint8), (LEVELS, 1))
    return np.vstack([rgb, np.zeros((1, 3), np.uint8)]).astype(np.uint8)


def colourise(values: np.ndarray, colours: Colours, threshold: float = 0.0) -> np.ndarray:
    """RGBA [h, w, 4] uint8 of what :func:`render_png` draws: ``values`` [h, w] in 0..1 coloured, NaN and values
    below ``threshold`` transparent (and black)."""
    idx = value_index(values, threshold)
    out = np.zeros(idx.shape + (4,), np.uint8)
    out[..., :3] = palette(colours)[idx]
    out[..., 3] = np.where(idx == LEVELS, 0, 255)
    return out


def render_png(values: np.ndarray, colours: Colours, threshold: float = 0.0) -> bytes:
    """An 8-bit palette PNG with one transparent entry of ``values`` [h, w] (as :func:`colourise`): a quarter of
    the bytes of RGBA to compress, so an overlay tile costs less than a slide tile."""
    idx = value_index(values, threshold)
    img = Image.frombytes("P", (idx.shape[1], idx.shape[0]), np.ascontiguousarray(idx).tobytes())
    img.putpalette(palette(colours).tobytes())
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1, transparency=bytes([255] * LEVELS + [0]))
    return buf.getvalue()
