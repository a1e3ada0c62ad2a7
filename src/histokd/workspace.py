"""Artefact paths of a run folder and atomic writes.

Every file a run writes goes through :func:`atomic_path`: it is written under a temporary name in the
same folder and renamed into place, so a killed run never leaves a half-written artefact behind.
The layout is documented in ``docs/artifacts.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from histokd.errors import InputError

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


def check_id(value: str, what: str = "slide_id") -> str:
    """Refuse identifiers that could escape the workspace (path separators, ``..``, empty)."""
    if not isinstance(value, str) or not value or not _SAFE_ID.match(value) or ".." in value:
        raise InputError(
            f"{what} {value!r}: only letters, digits, '.', '_' and '-' are allowed (no path separators or "
            f"'..'); rename it in the cohort CSV"
        )
    return value


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; artefacts are for everyone the umask allows
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def clean_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files left by a killed run (``.<name>.*.tmp``). Returns how many."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
    return n


class Workspace:
    """Paths of one run folder (``-w RUN``). Creates nothing until asked to write."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # tiles -----------------------------------------------------------------
    @property
    def tiles_dir(self) -> Path:
        return self.root / "tiles"

    def tiles_h5(self, slide_id: str) -> Path:
        return self.tiles_dir / f"{check_id(slide_id)}.h5"

    def tiles_png(self, slide_id: str) -> Path:
        return self.tiles_dir / f"{check_id(slide_id)}.png"

    @property
    def cohort_csv(self) -> Path:
        """The cohort the workspace was tiled from (copied at ``tile`` time)."""
        return self.root / "cohort.csv"

    # features --------------------------------------------------------------
    def features_dir(self, encoder: str) -> Path:
        return self.root / "features" / encoder_dirname(encoder)

    def features_h5(self, encoder: str, slide_id: str) -> Path:
        return self.features_dir(encoder) / f"{check_id(slide_id)}.h5"

    # models / predictions / reports ------------------------------------------
    def model_dir(self, model_id: str) -> Path:
        return self.root / "models" / check_id(model_id, "model id")

    def predictions_dir(self, model_id: str) -> Path:
        return self.root / "predictions" / check_id(model_id, "model id")

    def predictions_h5(self, model_id: str, slide_id: str) -> Path:
        return self.predictions_dir(model_id) / f"{check_id(slide_id)}.h5"

    def reports_dir(self, model_id: str) -> Path:
        return self.root / "reports" / check_id(model_id, "model id")

    def encoders_dir(self) -> Path:
        """Encoders trained by histokd (More From Less, SSL)."""
        return self.root / "encoders"


def encoder_dirname(encoder: str) -> str:
    """Folder name for an encoder spec such as ``timm:resnet18`` or ``mfl:/a/b`` (no separators)."""
    name = re.sub(r"[^A-Za-z0-9._\-]+", "_", encoder).strip("_")
    return name or "encoder"
