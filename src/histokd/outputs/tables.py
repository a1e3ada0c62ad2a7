"""Tables of a report: per-tile predictions (``tiles.csv``) and metrics with their 95% CIs as text.

The metrics and CIs are computed by :mod:`histokd.evaluate.binary` (the one owner of metrics); this
module only formats them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histokd.evaluate.binary import MetricRow
from histokd.workspace import write_frame_csv


def format_metric(row: MetricRow) -> str:
    """``"v [lo, hi]"`` to 3 decimals (``"v"`` without a CI, ``"n/a"`` when undefined) of a metric computed
    by :mod:`histokd.evaluate.binary`."""
    if not math.isfinite(row.value):
        return "n/a"
    if math.isfinite(row.low) and math.isfinite(row.high):
        return f"{row.value:.3f} [{row.low:.3f}, {row.high:.3f}]"
    return f"{row.value:.3f}"


def flatten_metrics(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten a ``metrics.json`` of unknown nesting into (key, text) rows for display.

    A dict holding a value and a CI (keys ``value``/``mean``/``estimate`` and ``low``/``high``,
    ``ci_low``/``ci_high`` or ``ci: [lo, hi]``) becomes one row ``"v [lo, hi]"``.
    """
    rows: list[tuple[str, str]] = []
    if isinstance(obj, Mapping):
        ci = _as_ci(obj)
        if ci is not None:
            return [(prefix or "value", ci)]
        for k, v in obj.items():
            rows.extend(flatten_metrics(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)) and len(obj) <= 12 and all(isinstance(v, (int, float)) for v in obj):
        rows.append((prefix, ", ".join(_fmt(v) for v in obj)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            rows.extend(flatten_metrics(v, f"{prefix}[{i}]"))
    else:
        rows.append((prefix, _fmt(obj)))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _as_ci(d: Mapping) -> str | None:
    val = next((d[k] for k in ("value", "mean", "estimate", "point") if k in d), None)
    if not isinstance(val, (int, float)) or isinstance(val, bool):
        return None
    lo = next((d[k] for k in ("low", "ci_low", "lower", "lo") if k in d), None)
    hi = next((d[k] for k in ("high", "ci_high", "upper", "hi") if k in d), None)
    if lo is None and isinstance(d.get("ci"), (list, tuple)) and len(d["ci"]) == 2:
        lo, hi = d["ci"]
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        return f"{_fmt(float(val))} [{_fmt(float(lo))}, {_fmt(float(hi))}]"
    return _fmt(float(val)) if len(d) == 1 else None


# ---------------------------------------------------------------------------------------------------------
# tiles.csv
# ---------------------------------------------------------------------------------------------------------


def tiles_frame(
    slide_id: str,
    coords: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    instance_scores: np.ndarray | None = None,
    gt_fraction: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per tile: ``slide_id, x, y, prob_<class>..., [instance_score], [gt_tumour_fraction]``.

    ``coords`` [N, 2] level-0 top-left px; ``probs`` [N, C]; ``instance_scores`` [N] raw teacher
    evidence; ``gt_fraction`` [N] fraction of the tile inside the ground-truth mask.
    """
    coords = np.asarray(coords)
    df = pd.DataFrame({"slide_id": slide_id, "x": coords[:, 0].astype(np.int64), "y": coords[:, 1].astype(np.int64)})
    for j, c in enumerate(classes):
        df[f"prob_{c}"] = np.asarray(probs)[:, j].astype(np.float32)
    if instance_scores is not None:
        df["instance_score"] = np.asarray(instance_scores, dtype=np.float32)
    if gt_fraction is not None:
        df["gt_tumour_fraction"] = np.asarray(gt_fraction, dtype=np.float32)
    return df


def write_csv(path: str | os.PathLike[str], df: pd.DataFrame) -> Path:
    """Write a DataFrame as CSV atomically (no index; floats with 6 significant digits; quoted and
    spreadsheet-safe, see :func:`histokd.workspace.write_frame_csv`)."""
    return write_frame_csv(path, df, float_format="%.6g")
