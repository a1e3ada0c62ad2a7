"""Tile grids at a target resolution: the geometry, one slide's grid file, reading it back (contract 4).

The verb that tiles a cohort (``histokd tile`` / ``histokd.tile(...)``) is :func:`histokd.pipeline.tile.tile`.

Geometry (whatever the slide's native resolution):

* tile side in level-0 px ``ps0 = size * target_mpp / level0_mpp`` (e.g. 224 px at 0.5 µm/px is 448 level-0
  px on a 0.25 µm/px slide and 224 on a 0.5 µm/px one: the same 112 µm);
* stride ``(size - overlap) * target_mpp / level0_mpp``; tile ``(i, j)`` has its top-left at
  ``round(i * stride), round(j * stride)``, so the grid starts at the slide's origin and is the same
  physical grid on every slide; only tiles that lie wholly inside the slide are candidates;
* a tile is kept when its tissue fraction (exact area coverage of the tissue mask,
  :func:`histokd.slides.masks.tile_fractions`) is ``>= min_tissue`` and > 0.

Each slide gives ``RUN/tiles/<slide>.h5`` (``coords``, ``tissue``, ``tissue_mask`` + attrs) and a QC PNG;
both are written atomically. :func:`tiles_up_to_date` tells whether an existing h5 was made with the same
configuration (resume).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pydantic import ConfigDict

from histokd.config import BaseConfig
from histokd.errors import InputError, SlideError
from histokd.slides.masks import tile_fractions
from histokd.slides.reader import open_slide
from histokd.slides.tissue import TissueMask, TissueParams, detect_tissue
from histokd.workspace import atomic_path

# attrs that must match for an existing tiles file to be reused
_RESUME_KEYS = ("patch_size", "target_mpp", "overlap", "min_tissue", "slide_path", "tissue_source", "tissue_params")
QC_MAX_SIDE = 1600


@dataclass
class TileGrid:
    """A slide's tile grid: ``coords`` [N, 2] int64 level-0 top-left (x, y), ``tissue`` [N] float32, attrs."""

    coords: np.ndarray
    tissue: np.ndarray
    attrs: dict[str, Any]
    tissue_mask: np.ndarray | None = None  # bool [h, w], downsample in attrs["tissue_mask_downsample"]

    def __len__(self) -> int:
        return int(len(self.coords))


class TilingConfig(BaseConfig):
    """One slide's tiling settings (pydantic, frozen, unknown keys refused): checked when built, each bad value
    refused with one line naming its command-line option."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_mpp: float = 0.5
    patch_size: int = 224
    overlap: int = 0
    min_tissue: float = 0.5
    slide_mpp: float | None = None
    backend: str = "auto"
    tissue: TissueParams = TissueParams()

    def model_post_init(self, __context: Any) -> None:
        if not self.target_mpp > 0:
            raise InputError(f"--mpp must be > 0 (got {self.target_mpp})")
        if self.patch_size < 8:
            raise InputError(f"--size must be >= 8 px (got {self.patch_size})")
        if not 0 <= self.overlap < self.patch_size:
            raise InputError(f"--overlap must be in [0, size) px (got {self.overlap} for size {self.patch_size})")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise InputError(f"--min-tissue must be in [0, 1] (got {self.min_tissue})")
        if self.slide_mpp is not None and not self.slide_mpp > 0:
            raise InputError(f"--slide-mpp must be > 0 (got {self.slide_mpp})")


# --------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------
def grid_coords(dimensions: tuple[int, int], level0_mpp: float, target_mpp: float, size: int,
                overlap: int = 0) -> tuple[np.ndarray, float]:
    """All candidate tiles wholly inside the slide: (coords [N, 2] int64 level-0 top-left, ps0 float).

    Row-major order (y, then x).
    """
    W, H = dimensions
    scale = target_mpp / level0_mpp  # level-0 px per target px
    ps0 = size * scale
    stride = (size - overlap) * scale
    nx = int(np.floor((W - ps0) / stride + 1e-9)) + 1 if W >= ps0 else 0
    ny = int(np.floor((H - ps0) / stride + 1e-9)) + 1 if H >= ps0 else 0
    xs = np.round(np.arange(nx) * stride).astype(np.int64)
    ys = np.round(np.arange(ny) * stride).astype(np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1), ps0


def tissue_tiles(tissue: TissueMask, dimensions: tuple[int, int], level0_mpp: float, target_mpp: float,
                 size: int, overlap: int, min_tissue: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Tiles whose tissue fraction is >= ``min_tissue`` (and > 0): (coords [N, 2], fractions [N], ps0)."""
    coords, ps0 = grid_coords(dimensions, level0_mpp, target_mpp, size, overlap)
    frac = tile_fractions(tissue.mask, tissue.downsample, coords, ps0)
    keep = (frac >= min_tissue) & (frac > 0)
    return coords[keep], frac[keep], ps0


# --------------------------------------------------------------------------------------------------
# one slide
# --------------------------------------------------------------------------------------------------
def tiling_attrs(cfg: TilingConfig, slide_id: str, slide_path: str, tissue_source: str) -> dict[str, Any]:
    """The h5 attrs a grid made with ``cfg`` carries (those of ``_RESUME_KEYS`` decide on resume)."""
    import histokd

    return {
        "patch_size": int(cfg.patch_size),
        "target_mpp": float(cfg.target_mpp),
        "overlap": int(cfg.overlap),
        "min_tissue": float(cfg.min_tissue),
        "slide_id": slide_id,
        "slide_path": str(slide_path),
        "tissue_source": tissue_source,
        "tissue_params": json.dumps(cfg.tissue.to_dict(), sort_keys=True),
        "histokd_version": histokd.__version__,
    }


def tile_slide(slide_id: str, slide_path: str | os.PathLike[str], out_h5: str | os.PathLike[str],
               out_png: str | os.PathLike[str] | None, cfg: TilingConfig,
               tissue_mask_path: str | os.PathLike[str] | None = None) -> int:
    """Tile one slide into ``out_h5`` (+ QC ``out_png``); returns the number of tiles.

    Raises :class:`SlideError` for an unreadable slide or one with no tissue tile (the QC PNG is still
    written then, to show why).
    """
    with open_slide(slide_path, mpp=cfg.slide_mpp, backend=cfg.backend) as slide:
        tissue = detect_tissue(slide, cfg.tissue, tissue_mask=tissue_mask_path)
        coords, frac, ps0 = tissue_tiles(tissue, slide.dimensions, slide.mpp, cfg.target_mpp, cfg.patch_size,
                                         cfg.overlap, cfg.min_tissue)
        if out_png is not None:
            write_qc_png(out_png, tissue, coords, ps0)
        if len(coords) == 0:
            what = "no tissue found" if not tissue.mask.any() else (
                f"no tile with >= {cfg.min_tissue:.0%} tissue (tissue covers {tissue.fraction:.1%} of the slide)")
            raise SlideError(
                f"{slide_path}: {what} at {cfg.target_mpp} µm/px, {cfg.patch_size} px tiles; check the QC image "
                f"{out_png}, lower --min-tissue, or give a tissue mask (tissue_mask_path column / --tissue-mask-dir)"
            )
        attrs = tiling_attrs(cfg, slide_id, str(slide_path), tissue.source)
        attrs.update({
            "patch_size_level0": int(round(ps0)),
            "patch_size_level0_exact": float(ps0),
            "level0_mpp": float(slide.mpp),
            "mpp_source": slide.mpp_source,  # "metadata" or "given" (--slide-mpp): see tiles_up_to_date
            "slide_dimensions": np.asarray(slide.dimensions, np.int64),
            "backend": slide.backend,
            "tissue_mask_downsample": float(tissue.downsample),
        })
        with atomic_path(out_h5) as tmp:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("coords", data=coords.astype(np.int64))
                f.create_dataset("tissue", data=frac.astype(np.float32))
                f.create_dataset("tissue_mask", data=tissue.mask.astype(np.uint8), compression="gzip",
                                 compression_opts=4)
                for k, v in attrs.items():
                    f.attrs[k] = v
    return int(len(coords))


def write_qc_png(path: str | os.PathLike[str], tissue: TissueMask, coords: np.ndarray, ps0: float) -> Path:
    """Thumbnail with the tissue contour (green), pen marks (red tint) and the kept tiles (blue boxes)."""
    from PIL import Image, ImageDraw
    from scipy import ndimage as ndi

    thumb = tissue.thumbnail
    h, w = thumb.shape[:2]
    mask = tissue.mask
    if mask.shape != (h, w):  # a user mask at another downsample: nearest-neighbour onto the thumbnail
        iy = np.minimum((np.arange(h) * mask.shape[0] / h).astype(int), mask.shape[0] - 1)
        ix = np.minimum((np.arange(w) * mask.shape[1] / w).astype(int), mask.shape[1] - 1)
        mask = mask[iy][:, ix]
    img = thumb.astype(np.float32)
    if tissue.pen is not None and tissue.pen.shape == (h, w) and tissue.pen.any():
        img[tissue.pen] = img[tissue.pen] * 0.5 + np.array([255, 0, 0], np.float32) * 0.5
    edge = mask & ~ndi.binary_erosion(mask, iterations=1, border_value=0)
    edge = ndi.binary_dilation(edge, iterations=max(1, round(max(h, w) / 800)))
    img[edge] = (0, 200, 0)
    pil = Image.fromarray(img.astype(np.uint8), "RGB")
    f = QC_MAX_SIDE / max(h, w)
    if f < 1:
        pil = pil.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX)
    else:
        f = 1.0
    draw = ImageDraw.Draw(pil)
    k = f / tissue.downsample  # level-0 px -> QC px
    for x, y in coords:
        draw.rectangle([x * k, y * k, (x + ps0) * k - 1, (y + ps0) * k - 1], outline=(30, 60, 255))
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG", compress_level=3)
    return Path(path)


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_tiles(path: str | os.PathLike[str], with_mask: bool = False) -> TileGrid:
    """Read ``RUN/tiles/<slide>.h5``: coords [N, 2] int64, tissue [N] float32, attrs (and the tissue mask)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: tiles file not found; run `histokd tile COHORT.csv -w RUN` first")
    try:
        with h5py.File(path, "r") as f:
            coords = np.asarray(f["coords"][()], dtype=np.int64).reshape(-1, 2)
            tissue = np.asarray(f["tissue"][()], dtype=np.float32) if "tissue" in f else np.ones(len(coords), np.float32)
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            mask = np.asarray(f["tissue_mask"][()], bool) if with_mask and "tissue_mask" in f else None
    except Exception as e:  # noqa: BLE001 - truncated / not HDF5 / missing dataset
        raise InputError(f"{path}: cannot read tiles file ({type(e).__name__}: {e}); delete it and re-run "
                         f"`histokd tile`") from e
    return TileGrid(coords=coords, tissue=tissue, attrs=attrs, tissue_mask=mask)


def tiles_up_to_date(path: Path, expected: dict[str, Any], slide_mpp: float | None = None) -> int | None:
    """Number of tiles if ``path`` holds a readable grid made with ``expected`` attrs, else None.

    ``slide_mpp`` (``--slide-mpp``, the level-0 µm/px given for slides without resolution metadata) is part
    of the key: a grid made with another given mpp is redone. It does not matter for a grid whose mpp came
    from the slide's own metadata (``open_slide`` ignores a given mpp then), nor when none is given now (the
    grid keeps the mpp it was made with)."""
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            n = int(f["coords"].shape[0])
    except Exception:  # noqa: BLE001 - unreadable: redo it
        return None
    if slide_mpp is not None and attrs.get("mpp_source") != "metadata":  # given now, and the grid's was given
        l0 = attrs.get("level0_mpp")
        if not isinstance(l0, (int, float)) or abs(float(l0) - float(slide_mpp)) > 1e-9 * float(slide_mpp):
            return None
    for k in _RESUME_KEYS:
        a, b = attrs.get(k), expected.get(k)
        if isinstance(b, float):
            if not isinstance(a, (int, float)) or abs(a - b) > 1e-9:
                return None
        elif a != b:
            return None
    return n


def tiled_level0_mpp(path: str | os.PathLike[str]) -> float | None:
    """The level-0 µm/px a slide was tiled with (attr ``level0_mpp`` of ``RUN/tiles/<slide>.h5``: the slide's
    metadata, or ``--slide-mpp`` for a slide without), or None when there is no readable grid. Every stage
    that reads a tiled slide's pixels opens it with this (``open_slide(path, mpp=...)``), so a slide tiled
    with ``--slide-mpp`` is read the same way by embed, label, report, IFKD and the tile images."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            v = _attr(f.attrs.get("level0_mpp"))
    except Exception:  # noqa: BLE001 - an unreadable grid: the stage that needs it says so itself
        return None
    return float(v) if isinstance(v, (int, float)) and v > 0 else None
