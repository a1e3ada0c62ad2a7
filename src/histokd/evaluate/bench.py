"""Summaries and tables of ``histokd bench`` results: per-method mean, std and 95% CI over folds.

The verb that fits the methods fold by fold (``histokd bench`` / ``histokd.bench(...)``) is
:func:`histokd.pipeline.bench.bench`; a fold record holds bag AUC / accuracy / balanced accuracy / F1 and,
where instance labels exist, instance AUC / AP. :func:`summarise` gives per method the mean, std and a
Student-t 95% CI over the K·R folds (folds of repeated CV share data, so this CI is optimistic), and fit time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from histokd.evaluate.bootstrap import mean_ci
from histokd.evaluate.metrics import BAG_METRICS


def summarise(folds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"bag": {m: mean_ci(np.array([f[m] for f in folds])) for m in BAG_METRICS},
                           "fit_seconds": mean_ci(np.array([f["fit_seconds"] for f in folds]))}
    if folds and all("bag_teacher" in f for f in folds):
        out["bag_teacher"] = {m: mean_ci(np.array([f["bag_teacher"][m] for f in folds])) for m in BAG_METRICS}
    for src in ("instance_from_probs", "instance_from_scores", "instance_from_teacher_singleton"):
        if all(src in f for f in folds) and folds:
            out[src] = {m: mean_ci(np.array([f[src][m] for f in folds])) for m in ("auc", "ap")}
    return out


def format_row(name: str, res: dict[str, Any]) -> str:
    def cell(d: dict[str, float] | None) -> str:
        return "-" if d is None or not np.isfinite(d["mean"]) else f"{d['mean']:.3f} ± {d['std']:.3f}"

    b = res["bag"]
    ip = (res.get("instance_from_probs") or {}).get("auc")
    isc = (res.get("instance_from_scores") or {}).get("auc")
    return " | ".join([name, cell(b["accuracy"]), cell(b["auc"]), cell(b["balanced_accuracy"]), cell(b["f1"]),
                       cell(isc), cell(ip), f"{res['fit_seconds']['mean']:.1f}"])


TABLE_HEAD = ("| method | accuracy | bag AUC | balanced acc. | F1 | inst. AUC (scores) | inst. AUC (probs) | fit s |\n"
              "|---|---|---|---|---|---|---|---|")


def format_table(results: dict[str, Any]) -> str:
    """Markdown table, mean ± std over folds."""
    rows = [f"| {format_row(n, r)} |" for n, r in results["methods"].items()]
    return "\n".join([TABLE_HEAD, *rows])
