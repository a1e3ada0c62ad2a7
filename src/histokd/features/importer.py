"""``histokd import-features``: register features users already have as a feature set of a run.

Recognised layouts of ``SRC_DIR`` (``--format auto`` looks for them in this order):

- **clam**: ``h5_files/<slide>.h5`` (``features`` [N, D], ``coords`` [N, 2]) and/or ``pt_files/<slide>.pt``
  (a tensor [N, D]); the h5 files win where both exist because they carry coordinates.
- **trident**: ``features_<encoder>/<slide>.h5`` anywhere below ``SRC_DIR`` (TRIDENT nests them under
  ``<mag>x_<size>px_<overlap>px_overlap/``), or ``SRC_DIR`` itself being such a folder.
- a plain folder of ``<slide>.h5`` / ``<slide>.pt`` files is read like CLAM.

Every file is validated (readable, [N, D], finite, one D for the whole set) and rewritten into
``RUN/features/NAME/<slide>.h5`` in the histokd layout (a copy, not a symlink: ``.pt`` files must be
converted anyway, and a run folder should not break when the source moves). The slide ID is the file stem.
The set's D is the one most files share (read from the h5 shapes first, no data loaded): a file of
another D is listed as failed, the others are imported; a tie between dimensions is refused.
``.pt`` files have no coordinates: they are taken from ``RUN/tiles/<slide>.h5`` when that grid has the same
number of tiles, else left at zero (heatmaps then cannot place the tiles, a warning says so).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from histokd.errors import FeatureError, HistokdError, InputError
from histokd.features.store import majority_dim, read_features, write_features
from histokd.progress import progress
from histokd.registry import Registry
from histokd.workspace import Workspace, check_id, encoder_dirname

log = logging.getLogger("histokd")

#: format name -> finder(src) -> {slide_id: file}; empty when the layout is absent
FORMATS: Registry = Registry("feature format")


@dataclass
class ImportResult:
    out_dir: Path
    format: str
    dim: int | None = None
    imported: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _by_stem(files: list[Path]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(files)}


@FORMATS.register("clam")
def _find_clam(src: Path) -> dict[str, Path]:
    found = _by_stem(list((src / "pt_files").glob("*.pt")))
    found.update(_by_stem(list((src / "h5_files").glob("*.h5"))))  # h5 (with coords) wins
    if not found:  # a flat folder of CLAM-style files
        found = _by_stem(list(src.glob("*.pt")))
        found.update(_by_stem(list(src.glob("*.h5"))))
    return found


@FORMATS.register("trident")
def _find_trident(src: Path) -> dict[str, Path]:
    dirs = [src] if src.name.startswith("features_") else sorted(p for p in src.rglob("features_*") if p.is_dir())
    if len(dirs) > 1:
        raise InputError(
            f"{src}: several TRIDENT feature folders ({', '.join(str(d.relative_to(src)) for d in dirs[:4])}); "
            f"pass the one you want as SRC_DIR"
        )
    return _by_stem(list(dirs[0].glob("*.h5"))) if dirs else {}


def _detect(src: Path, fmt: str) -> tuple[str, dict[str, Path]]:
    if fmt != "auto":
        found = FORMATS.get(fmt)(src)
        if not found:
            raise InputError(f"{src}: no {fmt} feature files found; check the folder or use --format auto")
        return fmt, found
    # TRIDENT's features_<enc> folder names are specific; CLAM's finder also accepts any flat folder
    for name in ("trident", "clam"):
        found = FORMATS.get(name)(src)
        if found:
            return name, found
    raise InputError(
        f"{src}: no feature files found (looked for h5_files/, pt_files/, features_<encoder>/, *.h5, *.pt); "
        f"point SRC_DIR at a CLAM or TRIDENT output folder"
    )


def _source_attrs(path: Path) -> dict:
    """Provenance kept by CLAM/TRIDENT on the file or on its ``coords`` dataset (patch size, level...)."""
    out: dict = {}
    if path.suffix != ".h5":
        return out
    with h5py.File(path, "r") as f:
        for obj in (f, f["coords"]) if "coords" in f else (f,):
            for k, v in obj.attrs.items():
                v = v.decode() if isinstance(v, bytes) else v
                if isinstance(v, (str, int, float, np.integer, np.floating)) or (
                    isinstance(v, np.ndarray) and v.dtype.kind in "iuf" and v.size <= 16
                ):
                    out.setdefault(f"source_{k}" if k in ("encoder", "weights_hash", "histokd_version") else k, v)
    return out


def import_features(
    src_dir: str | os.PathLike[str],
    workspace: str | os.PathLike[str] | Workspace,
    name: str,
    format: str = "auto",  # noqa: A002 - mirrors the CLI option
    overwrite: bool = False,
    wait: bool = False,
) -> ImportResult:
    """Validate and copy a folder of CLAM/TRIDENT feature files into ``RUN/features/<name>/``; ``wait``: wait for
    another run writing that feature set instead of stopping."""
    src = Path(src_dir).expanduser()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    if not src.is_dir():
        raise InputError(f"{src}: not a folder; pass the CLAM/TRIDENT output folder as SRC_DIR")
    if encoder_dirname(name) != name:
        raise InputError(f"--name {name!r}: use only letters, digits, '.', '_' and '-' (e.g. {encoder_dirname(name)})")
    fmt, found = _detect(src, format)
    with ws.writer(ws.features_dir(name), wait=wait, create=True):  # one writer per feature set
        existing = sorted(ws.features_dir(name).glob("*.h5"))
        if existing and not overwrite:
            raise InputError(
                f"{ws.features_dir(name)}: feature set {name!r} already has {len(existing)} file(s); "
                f"pass --overwrite to replace them or choose another --name"
            )
        result = ImportResult(out_dir=ws.features_dir(name), format=fmt)
        dims = _probe_dims(found, result.failed)
        result.dim = _majority_dim(src, dims, found)
        with progress() as bar:
            task = bar.add_task(f"import {fmt}", total=len(found), unit="slides")
            for sid, path in found.items():
                try:
                    if sid in result.failed:
                        continue
                    if dims[sid] != result.dim:
                        n_major = sum(d == result.dim for d in dims.values())
                        raise FeatureError(
                            f"{path}: features are {dims[sid]}-d but {n_major} of the {len(dims)} readable files in "
                            f"{src} are {result.dim}-d (another encoder?); re-extract this slide with the encoder of "
                            f"the others, or import it under its own --name"
                        )
                    out = ws.features_h5(name, sid)
                    ff = read_features(path, expected_dim=result.dim)
                    attrs = _source_attrs(path)
                    if path.suffix == ".pt":
                        ff.coords = _coords_from_grid(ws, sid, len(ff), path)
                    attrs.update(
                        encoder=name,
                        weights_hash="imported",
                        histokd_version=_version(),
                        imported_from=str(path.resolve()),
                        import_format=fmt,
                        slide_id=sid,
                    )
                    write_features(out, ff.features, ff.coords, attrs)
                    result.imported.append(sid)
                except HistokdError as e:
                    result.failed[sid] = str(e)
                finally:
                    bar.advance(task)
        log.info("imported %d %s feature file(s) (%s-d) into %s", len(result.imported), fmt, result.dim, result.out_dir)
        return result


def _probe_dims(found: dict[str, Path], failed: dict[str, str]) -> dict[str, int]:
    """{slide_id: D} of every readable file with a valid id; the others go to ``failed`` with their line."""
    dims: dict[str, int] = {}
    for sid, path in found.items():
        try:
            check_id(sid)
            dims[sid] = _feature_dim(path)
        except HistokdError as e:
            failed[sid] = str(e)
    return dims


def _feature_dim(path: Path) -> int:
    """D of a feature file: from the dataset's shape for h5 (no data read), else from a full read, which
    also raises the file's own :class:`FeatureError` (unreadable, not [N, D], ...)."""
    if path.suffix == ".h5":
        try:
            with h5py.File(path, "r") as f:
                shape = tuple(f["features"].shape)
            if len(shape) == 3 and shape[0] == 1:  # TRIDENT/CLAM's leading batch axis
                shape = shape[1:]
            if len(shape) == 2:
                return int(shape[1])
        except Exception:  # noqa: BLE001 - the full read below says what is wrong with the file
            pass
    return read_features(path).dim


def _majority_dim(src: Path, dims: dict[str, int], found: dict[str, Path]) -> int | None:
    """:func:`~histokd.features.store.majority_dim` of the files found in ``src`` (a tie is refused)."""
    dim = majority_dim(dims, src, {s: p.name for s, p in found.items()},
                       "keep the files of one encoder in the folder, or import each set under its own --name")
    n_major = sum(d == dim for d in dims.values())
    if n_major < len(dims):
        log.warning("%s: %d file(s) are not %d-d like the other %d; they are listed as failed", src,
                    len(dims) - n_major, dim, n_major)
    return dim


def _coords_from_grid(ws: Workspace, sid: str, n: int, path: Path) -> np.ndarray:
    grid = ws.tiles_h5(sid)
    if grid.exists():
        with h5py.File(grid, "r") as f:
            coords = np.asarray(f["coords"][()], np.int64)
        if len(coords) == n:
            return coords
        log.warning("%s: %d features but %d tiles in %s; coords left at zero", path, n, len(coords), grid)
    else:
        log.warning("%s: .pt features carry no coordinates; heatmaps will not place these tiles", path)
    return np.zeros((n, 2), np.int64)


def _version() -> str:
    import histokd

    return histokd.__version__
