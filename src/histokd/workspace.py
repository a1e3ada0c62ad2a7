"""Artefact paths of a run folder and atomic writes.

Every file a run writes goes through :func:`atomic_path`: it is written under a temporary name in the
same folder and renamed into place, so a killed run never leaves a half-written artefact behind.
The layout is documented in ``docs/artifacts.md``.

Every CSV histokd writes goes through :func:`write_csv` / :func:`write_frame_csv`: cells are quoted by the
``csv`` module (a label ``tumour, grade 2`` stays one cell) and text cells a spreadsheet would run as a
formula (starting with ``=``, ``+``, ``-``, ``@``, tab or CR) get a leading ``'``
(:func:`spreadsheet_safe`); numbers, including ``-0.5``, are written as numbers. :func:`read_csv`
undoes the escape, so what was written is what is read back.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histokd.errors import InputError
from histokd.locks import WorkspaceBusy, writer_lock  # noqa: F401 - re-exported: the lock of every artefact folder

if TYPE_CHECKING:
    import pandas as pd

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
# ids become file names (``<id>.h5`` and its temporary ``.<id>.h5.<random>.tmp``); most file systems cap a
# name at 255 bytes, so 200 leaves room for the longest suffix histokd adds
MAX_ID_LENGTH = 200


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file (weights provenance), read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def expand_user(path: str | os.PathLike[str]) -> Path:
    """``Path(path).expanduser()``, or the path as written when ``~user`` names no user (pathlib raises
    RuntimeError there; the file is then simply not found, with the usual one-line error)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)


def check_id(value: str, what: str = "slide_id") -> str:
    """Refuse identifiers that could escape the workspace (path separators, ``..``, empty) or that are too
    long to be a file name (more than :data:`MAX_ID_LENGTH` characters)."""
    fix = "rename it in the cohort CSV" if what == "slide_id" else f"choose another {what}"
    if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
        raise InputError(
            f"{what} {value[:40]!r}... is {len(value)} characters long, too long for a file name (at most "
            f"{MAX_ID_LENGTH}); {fix}"
        )
    if not isinstance(value, str) or not value or not _SAFE_ID.match(value) or ".." in value:
        raise InputError(
            f"{what} {value!r}: only letters, digits, '.', '_' and '-' are allowed (no path separators or "
            f"'..'); {fix}"
        )
    return value


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
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


# ------------------------------------------------------------------------------------------------------
# CSV: quoted, and safe to open in a spreadsheet
# ------------------------------------------------------------------------------------------------------
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _is_formula_like(text: str) -> bool:
    # leading quotes are looked through, so that a text that already starts with ' round-trips too
    head = text.lstrip("'")
    return head.startswith(_FORMULA_START) and not _NUMBER.match(head)


def spreadsheet_safe(value: Any) -> Any:
    """``value`` as a CSV cell a spreadsheet shows as text: a text starting with ``= + - @`` (or tab, CR)
    that is not a number gets a leading ``'`` (``=2+3`` -> ``'=2+3``); numbers and other values are kept.
    :func:`restore_cell` undoes it."""
    if isinstance(value, str) and _is_formula_like(value):
        return "'" + value
    return value


def restore_cell(value: Any) -> Any:
    """The value :func:`spreadsheet_safe` was given (``'=2+3`` -> ``=2+3``); other values unchanged."""
    if isinstance(value, str) and value.startswith("'") and _is_formula_like(value[1:]):
        return value[1:]
    return value


def write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]],
              float_format: str | None = None) -> Path:
    """Write a CSV atomically with the ``csv`` module: every cell quoted as needed and spreadsheet-safe.

    ``float_format`` (e.g. ``"%.6f"``) formats float cells; other cells are written with ``str``.
    """
    def cell(v: Any) -> Any:
        if float_format is not None and isinstance(v, float):
            return float_format % v
        return spreadsheet_safe(v)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([spreadsheet_safe(h) for h in header])
    for r in rows:
        w.writerow([cell(v) for v in r])
    return write_text(path, buf.getvalue())


def write_frame_csv(path: str | os.PathLike[str], df: pd.DataFrame, float_format: str | None = None) -> Path:
    """Write a DataFrame as CSV atomically (no index): quoted by pandas, text cells spreadsheet-safe."""
    out = df.copy()
    out.columns = [spreadsheet_safe(str(c)) for c in out.columns]
    for c in out.columns:
        if out[c].dtype == object or str(out[c].dtype) in ("string", "str"):
            out[c] = out[c].map(spreadsheet_safe).astype(object)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n")
    return Path(path)


def read_csv(path: str | os.PathLike[str], **kwargs: Any) -> pd.DataFrame:
    """Read a CSV histokd wrote (every cell a string, blanks kept as ``""``), undoing :func:`spreadsheet_safe`."""
    import pandas as pd

    kwargs = {"dtype": str, "keep_default_na": False, "index_col": False, **kwargs}
    df = pd.read_csv(path, **kwargs)
    df.columns = [restore_cell(str(c)) for c in df.columns]
    for c in df.columns:
        if df[c].dtype == object or str(df[c].dtype) in ("string", "str"):
            df[c] = df[c].map(restore_cell)
    return df


#: every temporary file histokd writes is ``.<name>.histokd-<pid>-<random>.tmp``: a name no one else makes
TEMP_TAG = "histokd-"
_TEMP_NAME = re.compile(r"^\..+\." + re.escape(TEMP_TAG) + r"(\d+)-[^/]*\.tmp$")


def temp_prefix(name: str) -> str:
    """The start of a temporary file or folder name for ``name`` (``.<name>.histokd-<pid>-``; end it with
    ``.tmp``): only histokd makes such names, and :func:`clean_stale_temps` removes them once the process is gone."""
    return f".{name}.{TEMP_TAG}{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:  # a killed process nobody has reaped yet (a zombie) is gone for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def clean_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files that a killed histokd run left in ``folder``: only histokd's own names
    (:data:`TEMP_TAG`), and only those whose process is gone, so a concurrent run's temp files and the
    user's own ``.*.tmp`` files are never touched. Returns how many were removed."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(f".*.{TEMP_TAG}*.tmp"):
            m = _TEMP_NAME.match(p.name)
            if m is None or _pid_alive(int(m.group(1))):
                continue
            with contextlib.suppress(FileNotFoundError):
                if p.is_dir() and not p.is_symlink():  # a folder written whole, then renamed (encoders, assets)
                    shutil.rmtree(p)
                else:
                    p.unlink()
                n += 1
    return n


#: layout version of a run folder, recorded in ``RUN/histokd.json``; bump it when the layout changes so
#: that an older histokd refuses a newer workspace instead of misreading it
WORKSPACE_FORMAT = 1


class _TrainedFolder:
    """The files every folder of trained weights has: ``model.pt`` (state dicts only), ``config.yaml``
    (what is needed to rebuild) and ``metrics.json``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)

    @property
    def weights(self) -> Path:
        return self.dir / "model.pt"

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"


class ModelFiles(_TrainedFolder):
    """The files of one model folder (contract 7): ``RUN/models/<id>/``, or a model folder anywhere (a bundle).
    ``config.yaml`` holds the method, classes, positive class and config."""

    @property
    def classes(self) -> Path:
        return self.dir / "classes.json"

    @property
    def log(self) -> Path:
        return self.dir / "train.log"

    @property
    def splits(self) -> Path:
        """``splits.csv``: slide_id, split, label of the bags the model was trained / validated / tested on."""
        return self.dir / "splits.csv"

    @property
    def pixel_metrics(self) -> Path:
        """``pixel_metrics.json``: validation / test pixel metrics of a segmenting model (IFKD)."""
        return self.dir / "pixel_metrics.json"

    @property
    def bundle(self) -> Path:
        """``bundle.json``: how the model's inputs were made (tiling, encoder, precision, stain normalisation),
        its classes, thresholds and out-of-distribution summary; no slide ids (``pipeline/bundle.py``)."""
        return self.dir / "bundle.json"

    @property
    def encoder_dir(self) -> Path:
        """``encoder/``: a copy of the ``mfl:`` encoder folder the model's features came from, so that the
        bundle carries its own encoder."""
        return self.dir / "encoder"

    def portable_files(self) -> list[Path]:
        """The files that make the model usable on new slides, without cohort details (what ``export-model``
        packs by default): weights, config, classes, bundle and the copied encoder folder."""
        files = [self.weights, self.config, self.classes, self.bundle]
        if self.encoder_dir.is_dir():
            files += sorted(p for p in self.encoder_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [p for p in files if p.is_file()]

    def cohort_files(self) -> list[Path]:
        """The files that name the training cohort's slides (splits, metrics with skipped slides, the training
        log, pixel metrics): exported only on request (``export-model --include-cohort``)."""
        return [p for p in (self.splits, self.metrics, self.log, self.pixel_metrics) if p.is_file()]


class EncoderFiles(_TrainedFolder):
    """The files of one encoder folder that histokd trained (``histokd train-encoder``):
    ``RUN/encoders/<id>/``, or such a folder anywhere (``--encoder mfl:<dir>``). ``model.pt`` holds
    ``he_encoder``, ``he_projector`` (and for MFL the dense branch); ``config.yaml`` is
    ``kind: histokd-encoder`` with what ``mfl:`` rebuilds; ``metrics.json`` the loss history."""

    @property
    def provenance(self) -> Path:
        """``provenance.json``: the data, weights hash, versions and training time."""
        return self.dir / "provenance.json"


class Workspace:
    """Paths of one run folder (``-w RUN``). Creates nothing until asked to write."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def format_json(self) -> Path:
        return self.root / "histokd.json"

    def check_format(self) -> None:
        """Refuse, with one line, a run folder written by a histokd whose workspace format this one does not
        read; record the format in a folder that has none yet (new, or from before the record existed)."""
        import histokd

        if self.format_json.exists():
            try:
                doc = json.loads(self.format_json.read_text(encoding="utf-8"))
                fmt = int(doc["workspace_format"])
            except (ValueError, KeyError, TypeError, OSError) as e:
                raise InputError(f"{self.format_json}: not a histokd workspace record ({type(e).__name__}); "
                                 f"restore it or use another workspace folder") from None
            if fmt != WORKSPACE_FORMAT:
                raise InputError(
                    f"{self.root}: written by histokd {doc.get('histokd_version', '?')} (workspace format {fmt}); "
                    f"this histokd {histokd.__version__} reads format {WORKSPACE_FORMAT}; "
                    + ("upgrade histokd" if fmt > WORKSPACE_FORMAT else "re-run the pipeline")
                    + " or use another workspace folder"
                )
            return
        write_json(self.format_json, {"workspace_format": WORKSPACE_FORMAT, "histokd_version": histokd.__version__})

    @contextlib.contextmanager
    def writer(self, folder: str | os.PathLike[str], wait: bool = False, create: bool = False) -> Iterator[None]:
        """What every stage does before it writes ``folder`` (an artefact folder of this run): check that the
        run folder exists (``create``: make it, as ``tile`` does) and its format (:meth:`check_format`), then
        hold the folder's one-writer lock (:func:`writer_lock`)."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise InputError(f"{self.root}: no such run folder; check -w, or make it with `histokd tile COHORT.csv "
                             f"-w {self.root}`")
        self.check_format()
        with writer_lock(folder, wait=wait):
            yield

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

    @property
    def predict_input_csv(self) -> Path:
        """``input_slides.csv``: the slides given to ``histokd predict`` as files or a folder (slide_id, path)."""
        return self.root / "input_slides.csv"

    # features --------------------------------------------------------------
    def features_dir(self, encoder: str) -> Path:
        return self.root / "features" / encoder_dirname(encoder)

    def features_h5(self, encoder: str, slide_id: str) -> Path:
        return self.features_dir(encoder) / f"{check_id(slide_id)}.h5"

    def instance_labels_h5(self, encoder: str, slide_id: str) -> Path:
        """Tile ground truth from the masks (contract 6), beside the features it was made for."""
        return self.features_dir(encoder) / "instance_labels" / f"{check_id(slide_id)}.h5"

    @classmethod
    def of_features_file(cls, path: str | os.PathLike[str]) -> Workspace:
        """The workspace a feature file ``RUN/features/<encoder>/<slide>.h5`` lies in."""
        return cls(Path(path).resolve().parents[2])

    # models / predictions / reports ------------------------------------------
    def model_dir(self, model_id: str) -> Path:
        return self.root / "models" / check_id(model_id, "model id")

    def model_files(self, model_id: str) -> ModelFiles:
        return ModelFiles(self.model_dir(model_id))

    def predictions_bags_csv(self, model_id: str) -> Path:
        """``bags.csv``: slide_id, split, label, pred, prob_<class>... of every labelled slide."""
        return self.predictions_dir(model_id) / "bags.csv"

    def predictions_metrics(self, model_id: str) -> Path:
        return self.predictions_dir(model_id) / "metrics.json"

    def predictions_pixel_metrics(self, model_id: str) -> Path:
        """``pixel_metrics.json``: Dice, IoU, pixel AUC, Hausdorff, FROC per split (segmenting labellers)."""
        return self.predictions_dir(model_id) / "pixel_metrics.json"

    def predictions_mask_png(self, model_id: str, slide_id: str) -> Path:
        """The pixel mask of a segmenting labeller as an 8-bit PNG."""
        return self.predictions_dir(model_id) / "masks" / f"{check_id(slide_id)}.png"

    def predictions_slides_csv(self, model_id: str) -> Path:
        """``slides.csv`` of ``histokd predict``: per slide the probabilities, the call at the model's threshold
        and the out-of-distribution score and flag."""
        return self.predictions_dir(model_id) / "slides.csv"

    def predictions_patients_csv(self, model_id: str) -> Path:
        """``patients.csv`` of ``histokd predict``: per patient the max of its slides' probabilities."""
        return self.predictions_dir(model_id) / "patients.csv"

    def report_index(self, model_id: str) -> Path:
        return self.reports_dir(model_id) / "index.html"

    def report_tiles_csv(self, model_id: str) -> Path:
        return self.reports_dir(model_id) / "tiles.csv"

    def report_heatmap(self, model_id: str, slide_id: str) -> Path:
        return self.reports_dir(model_id) / "heatmaps" / f"{check_id(slide_id)}.png"

    def report_geojson(self, model_id: str, slide_id: str) -> Path:
        return self.reports_dir(model_id) / "geojson" / f"{check_id(slide_id)}.geojson"

    def report_plot(self, model_id: str, name: str) -> Path:
        return self.reports_dir(model_id) / "plots" / f"{name}.png"

    def predictions_dir(self, model_id: str) -> Path:
        return self.root / "predictions" / check_id(model_id, "model id")

    def predictions_h5(self, model_id: str, slide_id: str) -> Path:
        return self.predictions_dir(model_id) / f"{check_id(slide_id)}.h5"

    def reports_dir(self, model_id: str) -> Path:
        return self.root / "reports" / check_id(model_id, "model id")

    def probes_dir(self) -> Path:
        """``RUN/probes/``: linear-probe results (``<encoder dir>.json``) and the encoder comparison."""
        return self.root / "probes"

    def probe_json(self, features: str) -> Path:
        """``RUN/probes/<encoder dir>.json``: the linear probe of one feature set."""
        return self.probes_dir() / f"{encoder_dirname(features)}.json"

    def probes_comparison(self, suffix: str = ".json") -> Path:
        """``RUN/probes/comparison.json`` (rows) and ``comparison.md`` (the table) of ``compare-encoders``."""
        if suffix not in (".json", ".md"):
            raise ValueError(f"comparison files are .json or .md, not {suffix!r}")
        return self.probes_dir() / f"comparison{suffix}"

    @property
    def log_file(self) -> Path:
        """``RUN/logs/histokd.log``: the traceback of every command that failed on this run folder."""
        return self.root / "logs" / "histokd.log"

    def view_export_dir(self) -> Path:
        """Where ``histokd view --export`` writes by convention (``RUN/view/``); ``histokd report`` links each
        slide to it when it holds an export."""
        return self.root / "view"

    def encoders_dir(self) -> Path:
        """Encoders trained by histokd (More From Less, SSL)."""
        return self.root / "encoders"

    def encoder_files(self, encoder_id: str) -> EncoderFiles:
        """The folder ``RUN/encoders/<id>/`` of an encoder trained by histokd."""
        return EncoderFiles(self.encoders_dir() / check_id(encoder_id, "encoder id"))


def encoder_dirname(encoder: str) -> str:
    """Folder name for an encoder spec such as ``timm:resnet18`` or ``mfl:/a/b`` (no separators)."""
    name = re.sub(r"[^A-Za-z0-9._\-]+", "_", encoder).strip("_")
    return name or "encoder"
