"""Cohort CSV: one row per slide, read and validated once (contract 1).

Columns: ``slide_id,path,label`` required (``label`` only where labels are needed: ``read_cohort(...,
require_label=False)``, as tile / embed / label / predict read it, accepts a cohort without the column or with
empty label cells, and those slides get the label None); optional ``split`` (train|val|test), ``patch_id`` /
``patient_id``, ``mask_path`` (tumour ground truth: PNG at any downsample, GeoJSON, ASAP XML),
``paired_path`` (paired dense-modality slide), ``paired_affine`` ("a,b,c,d,e,f"), ``tissue_mask_path``
(a user tissue mask, PNG or GeoJSON, that replaces tissue detection). Other columns are kept.

Relative paths are relative to the CSV's folder; :attr:`Cohort.df` holds absolute paths. Every cell is
read as a string (labels included: ``"0"``/``"1"`` or ``"normal"``/``"tumour"``); empty optional cells
are ``None``. The DataFrame index is the slide id (unnamed, so ``slide_id`` stays an ordinary column).

Labels are compared as written. Labels that differ only by case or spaces, or are known synonyms
(:data:`LABEL_SYNONYMS`: ``tumor`` / ``tumour`` only), would silently become separate classes, so they
are refused with the list of distinct labels; ``label_map`` (``histokd tile --label-map
"Tumour=tumour,tumor=tumour"``) renames labels as the cohort is read, before that check.

Structural problems (missing file or columns, duplicate IDs, an empty cohort, label spellings) raise
:class:`~histokd.errors.InputError`. Row problems (unsafe slide ID, empty path or label, unknown split,
malformed affine) raise too, unless ``drop_invalid=True``: then the row is left out and its message
kept in :attr:`Cohort.invalid`, so that a batch command can process the other slides.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from histokd.errors import HistokdError, InputError, one_line
from histokd.workspace import MAX_ID_LENGTH, Workspace, check_id, expand_user, restore_cell, write_frame_csv

REQUIRED = ("slide_id", "path", "label")
OPTIONAL = ("split", "patch_id", "patient_id", "mask_path", "paired_path", "paired_affine", "tissue_mask_path")
PATH_COLUMNS = ("path", "mask_path", "paired_path", "tissue_mask_path")
SPLITS = ("train", "val", "test")
# spellings of one class that are not a case / spacing difference; kept small on purpose: a synonym here
# merges what a user may mean as two classes (normal / benign are *not* synonyms)
LABEL_SYNONYMS = {"tumor": "tumour"}
LabelMap = str | Mapping[str, str] | Sequence[str] | None
_LABEL_MAP_HELP = 'give FROM=TO pairs separated by commas, e.g. --label-map "tumor=tumour,Tumour=tumour"'

log = logging.getLogger("histokd")


@dataclass
class Cohort:
    """A validated cohort. ``df``: one row per slide, absolute paths, index = slide id."""

    df: pd.DataFrame
    source: Path | None = None
    invalid: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def slide_ids(self) -> list[str]:
        return list(self.df["slide_id"])

    @property
    def classes(self) -> list[str]:
        """Sorted distinct labels (string order; the model stores its own mapping)."""
        return sorted({v for v in self.df["label"] if v is not None})

    @property
    def labelled(self) -> bool:
        """Whether any slide has a label."""
        return any(v is not None for v in self.df["label"])

    def row(self, slide_id: str) -> dict:
        """One slide's cells as a dict (blank optional cells are None)."""
        if slide_id not in self.df.index:
            raise InputError(f"slide {slide_id!r} is not in the cohort {self.source}")
        return {k: (None if _blank(v) else v) for k, v in self.df.loc[slide_id].to_dict().items()}

    def rows(self) -> list[dict]:
        """Every slide's cells as dicts, in cohort order (blank optional cells are None)."""
        return [{k: (None if _blank(v) else v) for k, v in r.items()} for r in self.df.to_dict("records")]

    def split(self, *names: str) -> Cohort:
        """The rows whose ``split`` is one of ``names`` (all rows when the cohort has no split column)."""
        if "split" not in self.df.columns:
            return self
        return Cohort(self.df[self.df["split"].isin(names)].copy(), self.source)

    def with_label_map(self, label_map: LabelMap) -> Cohort:
        """A copy with labels renamed by ``label_map`` (see :func:`parse_label_map`), spellings re-checked."""
        df = self.df.copy()
        df["label"] = _map_labels(df["label"], parse_label_map(label_map))
        check_label_spelling(df["label"], self.source)
        return Cohort(df, self.source, dict(self.invalid))

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the cohort CSV (absolute paths) atomically; quoted and spreadsheet-safe
        (:func:`~histokd.workspace.write_frame_csv`), read back unchanged by :func:`read_cohort`."""
        return write_frame_csv(path, self.df)


def _blank(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v.strip() == "")


def parse_label_map(spec: LabelMap) -> dict[str, str]:
    """``"tumor=tumour,Tumour=tumour"`` (or a list of such strings, or a dict) -> ``{"tumor": "tumour", ...}``."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        pairs = [(str(k).strip(), str(v).strip()) for k, v in spec.items()]
    else:
        parts = [p for s in ([spec] if isinstance(spec, str) else spec) for p in str(s).split(",") if p.strip()]
        pairs = []
        for p in parts:
            src, eq, dst = p.partition("=")
            if not eq:
                raise InputError(f"--label-map: {p.strip()!r} is not FROM=TO; {_LABEL_MAP_HELP}")
            pairs.append((src.strip(), dst.strip()))
    for src, dst in pairs:
        if not src or not dst:
            raise InputError(f"--label-map: {src}={dst} has an empty side; {_LABEL_MAP_HELP}")
    return dict(pairs)


def _map_labels(labels: pd.Series, mapping: dict[str, str]) -> pd.Series:
    if not mapping:
        return labels
    present = set(labels.dropna())
    unused = sorted(set(mapping) - present)
    if unused:
        log.warning("--label-map: no label %s in the cohort (labels: %s)", ", ".join(map(repr, unused)),
                    ", ".join(map(repr, sorted(present))))
    return _obj([mapping.get(v, v) if v is not None else None for v in labels], labels.index)


def label_key(label: str) -> str:
    """What two spellings of one class share: case-folded, spaces collapsed, synonyms resolved."""
    key = " ".join(str(label).split()).casefold()
    return LABEL_SYNONYMS.get(key, key)


def _preferred_spelling(spellings: list[str], counts: Counter) -> str:
    """The spelling to suggest: the most frequent; ties go to the canonical synonym, then lower case."""
    canonical = set(LABEL_SYNONYMS.values())
    return min(spellings, key=lambda s: (-counts[s], s not in canonical, s != s.lower(), s))


def check_label_spelling(labels: pd.Series, source: Path | str | None) -> None:
    """Refuse labels that are one class spelt differently (``tumour`` / ``Tumour`` / ``tumor`` / ``NORMAL``)."""
    counts = Counter(v for v in labels if v is not None)
    groups: dict[str, list[str]] = {}
    for lab in sorted(counts):
        groups.setdefault(label_key(lab), []).append(lab)
    clashes = [g for g in groups.values() if len(g) > 1]
    if not clashes:
        return
    renames = []
    for g in clashes:
        keep = _preferred_spelling(g, counts)
        renames += [f"{s}={keep}" for s in g if s != keep]
    distinct = ", ".join(f"{lab!r} ({counts[lab]})" for lab in sorted(counts))
    same = "; ".join(" / ".join(repr(s) for s in g) for g in clashes)
    fix = (f'pass --label-map "{",".join(renames)}" to `histokd tile` or fix the label column'
           if not any("," in r or r.count("=") != 1 for r in renames) else "fix the label column")
    where = source if source is not None else "cohort"
    raise InputError(
        f"{where}: labels {same} differ only by case, spaces or spelling (tumour/tumor) and would become "
        f"separate classes; distinct labels: {distinct}; {fix}"
    )


def read_cohort(path: str | os.PathLike[str], drop_invalid: bool = False, label_map: LabelMap = None,
                require_label: bool = True) -> Cohort:
    """Read and validate a cohort CSV (see the module docstring).

    ``label_map``: labels renamed as the file is read (``"tumor=tumour,Tumour=tumour"``, a list of such
    strings, or a dict), before the check that refuses one class spelt several ways. ``require_label=False``:
    the ``label`` column may be missing (it is then added, empty) and its cells may be empty (label None), for
    the stages that need no label (tile, embed, label, predict).
    """
    mapping = parse_label_map(label_map)
    path = expand_user(path)
    if not path.exists():
        raise InputError(f"{path}: cohort CSV not found; give the path of a CSV with columns slide_id,path,label")
    df, lines = _read_table(path)
    missing = [c for c in REQUIRED if c not in df.columns and (require_label or c != "label")]
    if missing:
        need = "slide_id,path,label" if require_label else "slide_id,path (label optional)"
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(df.columns) or 'none'}); "
            f"the cohort CSV needs {need}"
        )
    if "label" not in df.columns:
        df["label"] = pd.Series([None] * len(df), index=df.index, dtype=object)
    if df.empty:
        raise InputError(f"{path}: the cohort has no rows; add one row per slide")
    for c in df.columns:  # object columns with None for blanks (pandas' string dtype would turn None into NaN)
        df[c] = _obj([None if _blank(v) else restore_cell(str(v).strip()) for v in df[c]], df.index)
    df["label"] = _map_labels(df["label"], mapping)
    ids = df["slide_id"].fillna("")
    dup = sorted(set(ids[ids.duplicated(keep=False) & (ids != "")]))
    if dup:
        raise InputError(f"{path}: duplicate slide_id(s) {', '.join(dup[:10])}; give every slide a unique id")

    base = path.parent.resolve()
    for c in PATH_COLUMNS:
        if c in df.columns:
            df[c] = _obj([None if v is None else str(_absolute(v, base)) for v in df[c]], df.index)

    invalid: dict[str, str] = {}
    keep = []
    # records, not iterrows(): pandas 3's iterrows turns None into NaN
    for i, row in zip(df.index, df.to_dict("records")):
        key = row["slide_id"] if row["slide_id"] else f"row {lines[i]}"
        if len(key) > MAX_ID_LENGTH:  # the failure list shows the start of an over-long id
            key = f"{key[:40]}... (line {lines[i]})"
        try:
            _check_row(row, path, lines[i], require_label)
        except HistokdError as e:
            if not drop_invalid:
                raise
            invalid[str(key)] = str(e)
            continue
        keep.append(i)
    df = df.loc[keep].reset_index(drop=True)
    if df.empty:
        raise InputError(f"{path}: no valid row left ({len(invalid)} invalid); fix the cohort CSV")
    check_label_spelling(df["label"], path)
    df.index = pd.Index(df["slide_id"].tolist())
    return Cohort(df=df, source=path, invalid=invalid)


def _read_table(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """The CSV's cells as strings, one column per header cell, and the file line each row starts on
    (blank lines and quoted line breaks counted, so that messages name the line an editor shows).

    Empty cells beyond the header (a trailing comma on every row) and columns with neither a name nor a
    value (``slide_id,path,label,``) are dropped; a row longer than the header with values in the extra
    cells (usually an unquoted comma in a label) and a column name given twice are refused, never cut or
    renamed silently. A column with values but no name is kept as ``Unnamed: <k>``.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, skipinitialspace=True)
            rows, starts, start = [], [], 1
            for r in reader:
                if any(c.strip() for c in r):
                    rows.append(r)
                    starts.append(start)
                start = reader.line_num + 1
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the cohort as a UTF-8 CSV") from None
    except (OSError, csv.Error) as e:
        raise InputError(f"{path}: cannot parse the cohort CSV ({e}); fix it to a comma-separated table") from None
    if not rows:
        raise InputError(f"{path}: the file is empty; give a header slide_id,path,label and one row per slide")
    nul = next((starts[k] for k, r in enumerate(rows) if any("\x00" in c for c in r)), None)
    if nul is not None:  # no file name or label holds one; open() would fail on it as "embedded null byte"
        raise InputError(f"{path}: line {nul} holds a NUL character, so the file is binary or damaged; save the "
                         f"cohort as a plain-text UTF-8 CSV")
    header = [c.strip() for c in rows[0]]
    body = rows[1:]
    n = len(header)
    table = []
    for line, r in zip(starts[1:], body):
        extra = r[n:]
        if any(c.strip() for c in extra):
            raise InputError(
                f"{path}: line {line} has {len(r)} cells but the header has {n} ({one_line(','.join(header))}); quote cells "
                f'that contain a comma ("tumour, grade 2") or add the missing column name to the header'
            )
        table.append(r[:n] + [""] * (n - len(r)))
    keep = [k for k, name in enumerate(header) if name or any(row[k].strip() for row in table)]
    names = [header[k] or f"Unnamed: {k}" for k in keep]
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise InputError(f"{path}: column(s) {', '.join(map(repr, dup))} appear more than once in the header; keep one")
    return pd.DataFrame([[row[k] for k in keep] for row in table], columns=names, dtype=object), starts[1:]


def _obj(values: list, index: pd.Index) -> pd.Series:
    return pd.Series(values, index=index, dtype=object)


def _absolute(value: str, base: Path) -> Path:
    p = expand_user(value)
    return p if p.is_absolute() else (base / p).resolve()


def _check_row(row: dict, path: Path, line: int, require_label: bool = True) -> None:
    row = {k: (None if _blank(v) else v) for k, v in row.items()}
    sid = row["slide_id"]
    if sid is None:
        raise InputError(f"{path}: line {line}: empty slide_id; give every slide an id")
    try:
        check_id(sid)
    except InputError as e:
        raise InputError(f"{path}: line {line}: {e}") from None
    if row["path"] is None:
        raise InputError(f"{path}: slide {sid}: empty path; give the slide file")
    if row["label"] is None and require_label:
        raise InputError(f"{path}: slide {sid}: empty label; give the slide-level label (e.g. normal / tumour)")
    split = row.get("split")
    if split is not None and split not in SPLITS:
        raise InputError(f"{path}: slide {sid}: split {split!r} is not one of train|val|test; fix the split column")
    affine = row.get("paired_affine")
    if affine is not None:
        try:
            parts = [float(p) for p in str(affine).replace(";", ",").split(",")]
        except ValueError:
            parts = []
        if len(parts) != 6 or not all(math.isfinite(p) for p in parts):
            raise InputError(
                f"{path}: slide {sid}: paired_affine {affine!r} is not six numbers 'a,b,c,d,e,f'; fix it or leave "
                f"it empty for the identity"
            )


def load_workspace_cohort(ws: Workspace | str | os.PathLike[str]) -> Cohort:
    """The cohort copied into the workspace by ``histokd tile`` (``RUN/cohort.csv``), with one derived column,
    ``level0_mpp``: the level-0 µm/px each slide was tiled with (``RUN/tiles/<slide>.h5``; None before
    tiling). Stages that read a slide's pixels open it with ``open_slide(row["path"], mpp=row["level0_mpp"])``,
    so slides tiled with ``--slide-mpp`` (no resolution metadata) are read at the mpp they were tiled with."""
    from histokd.slides.tiling import tiled_level0_mpp

    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    if not ws.cohort_csv.exists():
        raise InputError(f"{ws.cohort_csv}: no cohort in this workspace; run `histokd tile COHORT.csv -w {ws.root}` first")
    co = read_cohort(ws.cohort_csv, require_label=False)
    mpps = []
    for sid in co.df["slide_id"].astype(str):
        try:
            mpps.append(tiled_level0_mpp(ws.tiles_h5(sid)))
        except HistokdError:  # an id the workspace cannot hold: no grid
            mpps.append(None)
    co.df["level0_mpp"] = pd.Series(mpps, index=co.df.index, dtype=object)
    return co
