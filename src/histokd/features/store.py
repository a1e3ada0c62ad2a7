"""Feature files in the CLAM/TRIDENT layout: ``features`` (N, D) and ``coords`` (N, 2) in one HDF5 file.

Provenance (encoder name, weights hash, histokd version, target mpp, patch size) lives in the file's
attributes. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from histokd.errors import FeatureError
from histokd.workspace import atomic_path


@dataclass
class FeatureFile:
    features: np.ndarray  # [N, D] float32 (float16 on request)
    coords: np.ndarray  # [N, 2] int64, level-0 top-left pixel
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.features.shape[0])


def write_features(
    path: str | os.PathLike[str],
    features: np.ndarray,
    coords: np.ndarray,
    attrs: dict[str, Any] | None = None,
    dtype: str = "float32",
) -> Path:
    features = np.asarray(features)
    coords = np.asarray(coords)
    if features.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2 or len(features) != len(coords):
        raise FeatureError(
            f"{path}: features {features.shape} and coords {coords.shape} do not match (want [N,D] and [N,2])"
        )
    if not np.isfinite(features).all():
        raise FeatureError(f"{path}: features contain NaN or inf; check the encoder and the input tiles")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=features.astype(dtype))
            f.create_dataset("coords", data=coords.astype(np.int64))
            for k, v in (attrs or {}).items():
                if v is not None:
                    f.attrs[k] = v
    return Path(path)


def read_features(path: str | os.PathLike[str], expected_dim: int | None = None) -> FeatureFile:
    """Read a histokd, CLAM (``h5_files``) or TRIDENT features file; float32 features out."""
    path = Path(path)
    if not path.exists():
        raise FeatureError(f"{path}: feature file not found; run `histokd embed` or `histokd import-features`")
    if path.suffix == ".pt":
        return _read_pt(path, expected_dim)
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise FeatureError(f"{path}: no 'features' dataset; is this a CLAM/TRIDENT/histokd feature file?")
            feats = np.asarray(f["features"][()], dtype=np.float32)
            coords = np.asarray(f["coords"][()]) if "coords" in f else np.zeros((len(feats), 2), np.int64)
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
    except FeatureError:
        raise
    except Exception as e:  # truncated / not HDF5
        raise FeatureError(f"{path}: cannot read feature file ({e}); delete it and re-run `histokd embed`") from e
    if feats.ndim == 3 and feats.shape[0] == 1:  # TRIDENT/CLAM sometimes keep a leading batch axis
        feats = feats[0]
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    return _check(path, FeatureFile(feats, coords.astype(np.int64), attrs), expected_dim)


def _read_pt(path: Path, expected_dim: int | None) -> FeatureFile:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FeatureError(f"{path}: cannot read .pt feature file ({e}); re-export it") from e
    if isinstance(obj, dict):
        obj = obj.get("features", next(iter(obj.values())))
    feats = np.asarray(obj, dtype=np.float32)
    return _check(path, FeatureFile(feats, np.zeros((len(feats), 2), np.int64), {}), expected_dim)


def _check(path: Path, ff: FeatureFile, expected_dim: int | None) -> FeatureFile:
    if ff.features.ndim != 2:
        raise FeatureError(f"{path}: features have shape {ff.features.shape}, want [N, D]; re-extract them")
    if expected_dim is not None and ff.dim != expected_dim:
        raise FeatureError(
            f"{path}: features are {ff.dim}-d but this feature set / model expects {expected_dim}-d; "
            f"re-extract with the same encoder"
        )
    if len(ff.coords) != len(ff.features):
        raise FeatureError(f"{path}: {len(ff.features)} features but {len(ff.coords)} coords; re-extract")
    if not np.isfinite(ff.features).all():
        raise FeatureError(f"{path}: features contain NaN or inf; re-extract this slide")
    return ff


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


class FeatureWriter:
    """Stream features of one slide into ``path`` in chunks, so that a 100k-tile slide never sits in memory.

    The file is written under a temporary name and renamed into place by :meth:`close` (only when every
    row was written); :meth:`abort` deletes it. Use as a context manager::

        with FeatureWriter(path, coords, dim=1280, attrs=...) as w:
            w.write(0, feats_batch)   # [b, D] rows start..start+b
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        coords: np.ndarray,
        dim: int,
        attrs: dict[str, Any] | None = None,
        dtype: str = "float32",
        chunk_rows: int = 1024,
    ) -> None:
        if dtype not in ("float32", "float16"):
            raise FeatureError(f"{path}: feature dtype {dtype!r} not supported; use float32 or float16")
        coords = np.asarray(coords, dtype=np.int64)
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise FeatureError(f"{path}: coords have shape {coords.shape}, want [N, 2]")
        self.path = Path(path)
        self.n = len(coords)
        self.dim = int(dim)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._f = h5py.File(self._tmp, "w")
        chunks = (max(1, min(self.n, chunk_rows)), self.dim) if self.n else None
        self._ds = self._f.create_dataset("features", shape=(self.n, self.dim), dtype=dtype, chunks=chunks)
        self._f.create_dataset("coords", data=coords)
        for k, v in (attrs or {}).items():
            if v is not None:
                self._f.attrs[k] = v
        self._written = 0
        self._closed = False

    def write(self, start: int, features: np.ndarray) -> None:
        """Write rows ``start .. start + len(features)`` ([b, D] float)."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.dim or start + len(features) > self.n:
            raise FeatureError(
                f"{self.path}: batch of shape {features.shape} at row {start} does not fit [{self.n}, {self.dim}]"
            )
        if not np.isfinite(features).all():
            raise FeatureError(f"{self.path}: the encoder produced NaN or inf at rows {start}..; check the tiles")
        self._ds[start : start + len(features)] = features
        self._written += len(features)

    def close(self) -> Path:
        """Finish the file and move it into place; refuses when rows are missing."""
        if self._closed:
            return self.path
        if self._written != self.n:
            self.abort()
            raise FeatureError(f"{self.path}: only {self._written} of {self.n} rows were written; re-run to resume")
        self._f.close()
        self._closed = True
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file."""
        if self._closed:
            return
        self._closed = True
        self._f.close()
        err = FeatureError("aborted")
        try:
            self._ctx.__exit__(FeatureError, err, None)
        except FeatureError:
            pass

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is None:
            self.close()
        else:
            self.abort()


def feature_file_info(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], str, dict[str, Any]] | None:
    """``(features shape, dtype, attrs)`` without reading the features; ``None`` if absent or unreadable."""
    try:
        with h5py.File(path, "r") as f:
            ds = f["features"]
            if "coords" not in f or f["coords"].shape[0] != ds.shape[0]:
                return None
            return tuple(ds.shape), str(ds.dtype), {k: _attr(v) for k, v in f.attrs.items()}
    except Exception:  # noqa: BLE001 - missing, truncated, not HDF5: all mean "not done"
        return None


def majority_dim(dims: dict[str, int], where: object, names: dict[str, str], fix: str) -> int | None:
    """The feature dimension most files of a set share (``dims``: key -> D), so that one stray file cannot
    decide for the others; None when ``dims`` is empty. A tie between the most common dimensions is
    refused (which set is meant cannot be guessed) with one line naming ``where``, each dimension's files
    (``names``: key -> file name) and ``fix``."""
    from collections import Counter

    from histokd.errors import InputError

    ranked = Counter(dims.values()).most_common()
    if not ranked:
        return None
    if sum(n == ranked[0][1] for _, n in ranked) > 1:
        groups = "; ".join(f"{d}-d: " + ", ".join(names[k] for k in sorted(dims) if dims[k] == d)[:200]
                           for d, _ in ranked)
        raise InputError(f"{where}: feature files of different dimensions and no majority ({groups}); {fix}")
    return ranked[0][0]
