"""Paired tiles: an H&E tile and the tile of the aligned information-dense slide at the same place.

The cohort's ``paired_path`` column names the dense slide (e.g. a multiplex TIFF with nuclear, tumour- and
immune-marker channels); ``paired_affine`` ("a,b,c,d,e,f") maps H&E level-0 pixel coordinates to paired
level-0 pixel coordinates::

    x' = a * x + b * y + c
    y' = d * x + e * y + f

(the row-major 2x3 matrix of OpenCV / scikit-image). Absent or empty means the identity, which is the case
for the synthetic cohort, where both slides share dimensions and mpp.

Geometry of one tile: output pixel ``(u, v)`` of a tile of ``size`` px at ``mpp`` µm/px whose level-0
top-left is ``(x0, y0)`` covers the H&E level-0 square starting at ``(x0 + u*s, y0 + v*s)`` with
``s = mpp / he_mpp``. The paired tile samples the dense slide at the affine image of the same points, so the
two tiles are pixel-aligned: ``he[v, u]`` and ``dense[v, u]`` show the same piece of tissue.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histokd.errors import InputError, SlideError
from histokd.workspace import Workspace

log = logging.getLogger("histokd")

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def parse_affine(value: Any, where: str = "paired_affine") -> np.ndarray:
    """``"a,b,c,d,e,f"`` (or None / NaN / "") -> ``[2, 3]`` float64 matrix; identity when absent."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return IDENTITY.copy()
    try:
        parts = [float(p) for p in str(value).replace(";", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) != 6 or not all(math.isfinite(p) for p in parts):
        raise InputError(
            f"{where}: {value!r} is not an affine transform; give six numbers 'a,b,c,d,e,f' "
            f"(x' = a*x + b*y + c, y' = d*x + e*y + f, level-0 px) or leave it empty for the identity"
        )
    m = np.array(parts, dtype=np.float64).reshape(2, 3)
    if abs(np.linalg.det(m[:, :2])) < 1e-9:
        raise InputError(f"{where}: {value!r} is a singular affine transform; check the registration")
    return m


def _as_channels(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    return arr[..., None] if arr.ndim == 2 else arr


def read_dense_tile(
    dense: Any, x0: float, y0: float, size: int, mpp: float, he_mpp: float, affine: np.ndarray
) -> np.ndarray:
    """Tile ``[size, size, C]`` uint8 of the dense slide aligned with the H&E tile at ``(x0, y0)``.

    ``dense`` is an open slide (contract 2) with ``read_region_channels``; ``mpp`` is the tile resolution
    (µm/px) and ``he_mpp`` the H&E level-0 resolution.
    """
    a = affine[:, :2]
    t = affine[:, 2]
    s = mpp / he_mpp  # H&E level-0 px per output px
    dense_mpp = float(dense.mpp)
    if np.allclose(a, np.eye(2)):
        # A pure translation: one direct read, no resampling (exact for the synthetic cohort).
        xd, yd = x0 + t[0], y0 + t[1]
        if abs(xd - round(xd)) < 1e-6 and abs(yd - round(yd)) < 1e-6:
            return _as_channels(
                dense.read_region_channels(int(round(xd)), int(round(yd)), size, s * dense_mpp)
            )
    return _read_dense_warped(dense, x0, y0, size, s, a, t, dense_mpp)


def _read_dense_warped(
    dense: Any, x0: float, y0: float, size: int, s: float, a: np.ndarray, t: np.ndarray, dense_mpp: float
) -> np.ndarray:
    """General affine: read the bounding box of the mapped tile, then bilinearly resample it."""
    from scipy.ndimage import map_coordinates

    centres = (np.arange(size) + 0.5) * s
    gx, gy = np.meshgrid(x0 + centres, y0 + centres)  # [size, size] H&E level-0 px, (row=v, col=u)
    qx = a[0, 0] * gx + a[0, 1] * gy + t[0]
    qy = a[1, 0] * gx + a[1, 1] * gy + t[1]
    k = s * math.sqrt(abs(np.linalg.det(a)))  # paired level-0 px per read px: keeps the tile resolution
    # Start the box half a read pixel (plus a margin) before the first sample, so that for scalings,
    # reflections and 90-degree rotations every sample falls on a read-pixel centre (no blur).
    bx0 = _snap(float(qx.min()) - 2.5 * k)
    by0 = _snap(float(qy.min()) - 2.5 * k)
    bw = int(math.ceil((qx.max() - bx0) / k + 2.5))
    bh = int(math.ceil((qy.max() - by0) / k + 2.5))
    region = _as_channels(dense.read_region_channels(bx0, by0, (bw, bh), k * dense_mpp))
    rows = (qy - by0) / k - 0.5
    cols = (qx - bx0) / k - 0.5
    out = np.empty((size, size, region.shape[2]), dtype=np.uint8)
    for c in range(region.shape[2]):
        v = map_coordinates(region[..., c].astype(np.float32), [rows, cols], order=1, mode="nearest")
        out[..., c] = np.clip(np.rint(v), 0, 255).astype(np.uint8)
    return out


def _snap(v: float) -> float:
    """Round to the nearest integer when within float noise (keeps reads on the pixel grid)."""
    r = round(v)
    return float(r) if abs(v - r) < 1e-6 else v


@dataclass
class PairedTiles:
    """Tiles held in memory for self-supervised training.

    ``he`` [N, H, W, 3] uint8; ``dense`` [N, H, W, C] uint8 or None (H&E-only); ``coords`` [N, 2] int64
    H&E level-0 top-left; ``slide_ids`` [N]; all at ``mpp`` µm/px and ``tile_size`` px.
    """

    he: np.ndarray
    dense: np.ndarray | None
    coords: np.ndarray
    slide_ids: np.ndarray
    tile_size: int
    mpp: float
    failures: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.he.shape[0])


def _tile_centres(grid_coords: np.ndarray, grid_extent: float, extent: float) -> np.ndarray:
    """Top-left of a tile of ``extent`` level-0 px centred in each grid tile of ``grid_extent`` px."""
    off = (grid_extent - extent) / 2.0
    return np.round(grid_coords + off).astype(np.int64)


def sample_locations(
    workspace: Workspace,
    tile_size: int,
    mpp: float,
    max_tiles: int,
    seed: int,
    splits: tuple[str, ...] | None = ("train",),
    require_paired: bool = True,
) -> tuple[Any, list[tuple[str, np.ndarray]]]:
    """Choose up to ``max_tiles`` tile locations over the workspace's slides (seeded, spread over slides).

    Locations are the centres of the tiling grid (``RUN/tiles/<slide>.h5``), so only tissue is sampled.
    Returns ``(cohort_df rows used, [(slide_id, coords [n, 2] int64 H&E level-0 top-left)])``.
    The same arguments give the same locations whether or not the dense slide is read, so that the
    H&E-only control trains on exactly the tiles the cross-modal encoder saw.
    """
    from histokd.data.cohort import load_workspace_cohort
    from histokd.slides.tiling import read_tiles

    df = load_workspace_cohort(workspace).df
    if splits and "split" in df.columns:
        df = df[df["split"].isin(splits)]
        if df.empty:
            raise InputError(
                f"{workspace.cohort_csv}: no slide in split(s) {', '.join(splits)}; "
                f"pass --splits with splits that exist, or add a split column"
            )
    if require_paired:
        if "paired_path" not in df.columns or df["paired_path"].isna().all():
            raise InputError(
                f"{workspace.cohort_csv}: no paired_path column; More From Less needs the paired dense slide "
                f"of each H&E slide (e.g. `histokd synth` writes one)"
            )
        df = df[df["paired_path"].notna()]
    per_slide: list[tuple[str, np.ndarray]] = []
    for sid in df["slide_id"]:
        path = workspace.tiles_h5(sid)
        if not path.exists():
            log.warning("%s: no tile grid; run `histokd tile` first (slide skipped)", path)
            continue
        grid = read_tiles(path)
        if len(grid.coords) == 0:
            continue
        l0 = float(grid.attrs["level0_mpp"])
        extent = tile_size * mpp / l0
        per_slide.append((sid, _tile_centres(np.asarray(grid.coords), float(grid.attrs["patch_size_level0"]), extent)))
    if not per_slide:
        raise InputError(f"{workspace.root}: no tiled slide to train on; run `histokd tile` first")
    rng = np.random.default_rng(seed)
    total = sum(len(c) for _, c in per_slide)
    out: list[tuple[str, np.ndarray]] = []
    if total <= max_tiles:
        out = per_slide
    else:
        # Proportional allocation, then a seeded subset of each slide's grid.
        flat = np.concatenate([np.full(len(c), i) for i, (_, c) in enumerate(per_slide)])
        chosen = np.sort(rng.choice(total, size=max_tiles, replace=False))
        starts = np.cumsum([0] + [len(c) for _, c in per_slide])
        for i, (sid, c) in enumerate(per_slide):
            idx = chosen[flat[chosen] == i] - starts[i]
            if len(idx):
                out.append((sid, c[idx]))
    return df.set_index("slide_id"), out


def load_paired_tiles(
    workspace: Workspace,
    tile_size: int = 64,
    mpp: float = 1.0,
    max_tiles: int = 4000,
    seed: int = 0,
    splits: tuple[str, ...] | None = ("train",),
    with_dense: bool = True,
    show_progress: bool | None = None,
) -> PairedTiles:
    """Read the sampled H&E tiles (and, with ``with_dense``, their aligned dense tiles) into memory.

    A slide that cannot be read is skipped with a warning and listed in ``PairedTiles.failures``.
    """
    from histokd.progress import progress
    from histokd.slides.reader import open_slide

    rows, locations = sample_locations(workspace, tile_size, mpp, max_tiles, seed, splits, require_paired=True)
    he_list, dense_list, coords_list, sid_list = [], [], [], []
    failures: dict[str, str] = {}
    n_total = sum(len(c) for _, c in locations)
    disable = None if show_progress is None else not show_progress
    with progress(disable=disable) as bar:
        task = bar.add_task("reading paired tiles" if with_dense else "reading H&E tiles", total=n_total, unit="tile")
        for sid, coords in locations:
            row = rows.loc[sid]
            try:
                he_t, de_t = _read_slide_tiles(row, coords, tile_size, mpp, with_dense, open_slide)
            except (SlideError, InputError) as e:
                log.warning("%s: %s (slide skipped)", sid, e)
                failures[sid] = str(e)
                bar.advance(task, len(coords))
                continue
            he_list.append(he_t)
            if with_dense:
                dense_list.append(de_t)
            coords_list.append(coords)
            sid_list.extend([sid] * len(coords))
            bar.advance(task, len(coords))
    if not he_list:
        raise InputError(f"{workspace.root}: no paired tile could be read ({len(failures)} slides failed)")
    dense = np.concatenate(dense_list) if with_dense else None
    if with_dense and len({d.shape[-1] for d in dense_list}) > 1:
        raise InputError("paired slides have different channel counts; use one dense modality per cohort")
    return PairedTiles(
        he=np.concatenate(he_list),
        dense=dense,
        coords=np.concatenate(coords_list).astype(np.int64),
        slide_ids=np.asarray(sid_list),
        tile_size=tile_size,
        mpp=mpp,
        failures=failures,
    )


def _read_slide_tiles(
    row: Any, coords: np.ndarray, tile_size: int, mpp: float, with_dense: bool, open_slide: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    he_tiles = np.empty((len(coords), tile_size, tile_size, 3), np.uint8)
    dense_tiles: np.ndarray | None = None
    with open_slide(row["path"], mpp=row.get("level0_mpp")) as he:  # the mpp it was tiled with (--slide-mpp)
        for i, (x, y) in enumerate(coords):
            he_tiles[i] = he.read_region_mpp(int(x), int(y), tile_size, mpp)
        he_mpp = float(he.mpp)
    if with_dense:
        affine = parse_affine(row.get("paired_affine"), where=f"{row.name}: paired_affine")
        paired = Path(str(row["paired_path"]))
        with open_slide(paired) as dense:
            first = read_dense_tile(dense, *coords[0], tile_size, mpp, he_mpp, affine)
            dense_tiles = np.empty((len(coords), tile_size, tile_size, first.shape[2]), np.uint8)
            dense_tiles[0] = first
            for i in range(1, len(coords)):
                dense_tiles[i] = read_dense_tile(dense, *coords[i], tile_size, mpp, he_mpp, affine)
    return he_tiles, dense_tiles
