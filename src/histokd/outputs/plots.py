"""Evaluation plots as PNG bytes: ROC, precision-recall, calibration (reliability) and confusion matrix.

The numbers in the legends (AUC, AP, ECE) are :mod:`histokd.evaluate.binary`'s; this module only draws.

Each function takes one or several named curves so that bag- and tile-level results share a plot.
matplotlib's object API (``Figure``) is used: no pyplot state, no window.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from histokd.evaluate.binary import auc_score, average_precision, calibration_bins, expected_calibration_error

Curve = tuple[np.ndarray, np.ndarray]  # (y_true [N] in {0, 1}, score [N])


def _figure(size: tuple[float, float] = (4.6, 4.2)):  # noqa: ANN202 - matplotlib Figure, Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig) -> bytes:  # noqa: ANN001
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def text_safe(s: str) -> str:
    """Escape ``$`` so that matplotlib never parses user text (class names, slide ids) as mathtext."""
    return str(s).replace("$", r"\$")


def _usable(y: np.ndarray) -> bool:
    return len(y) > 0 and 0 < int(np.sum(y)) < len(y)


def plot_roc(curves: Mapping[str, Curve], title: str = "ROC") -> bytes:
    """ROC curves with their AUC in the legend; a curve with a single class present is listed as n/a."""
    from sklearn.metrics import roc_curve

    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
    for name, (y, s) in curves.items():
        y, s = np.asarray(y).astype(int), np.asarray(s, dtype=float)
        if not _usable(y):
            ax.plot([], [], label=f"{text_safe(name)} (n/a: one class)")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.8, label=f"{text_safe(name)} (AUC {auc_score(y, s):.3f}, n={len(y)})")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(text_safe(title), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def plot_pr(curves: Mapping[str, Curve], title: str = "Precision-recall") -> bytes:
    """Precision-recall curves with average precision; the dashed line of each is its prevalence."""
    from sklearn.metrics import precision_recall_curve

    fig, ax = _figure()
    for name, (y, s) in curves.items():
        y, s = np.asarray(y).astype(int), np.asarray(s, dtype=float)
        if not _usable(y):
            ax.plot([], [], label=f"{text_safe(name)} (n/a: one class)")
            continue
        prec, rec, _ = precision_recall_curve(y, s)
        (line,) = ax.plot(rec, prec, lw=1.8, label=f"{text_safe(name)} (AP {average_precision(y, s):.3f})")
        ax.axhline(y.mean(), ls="--", lw=1, c=line.get_color(), alpha=0.5)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(text_safe(title), fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    return _png(fig)


def plot_calibration(curves: Mapping[str, Curve], n_bins: int = 10, title: str = "Calibration") -> bytes:
    """Reliability diagram (observed frequency against mean predicted probability), ECE in the legend."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
    for name, (y, p) in curves.items():
        if len(y) == 0:
            continue
        mean_p, freq, _ = calibration_bins(y, p, n_bins)
        ece = expected_calibration_error(y, p, n_bins)
        ax.plot(mean_p, freq, marker="o", ms=4, lw=1.5, label=f"{text_safe(name)} (ECE {ece:.3f})")
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(text_safe(title), fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def plot_confusion(cm: np.ndarray, labels: Sequence[str], title: str = "Confusion matrix") -> bytes:
    """Confusion matrix ``cm`` [C, C] (rows true, columns predicted) with counts in the cells."""
    cm = np.asarray(cm)
    n = len(labels)
    fig, ax = _figure((max(3.6, 1.1 * n + 2.2), max(3.2, 1.0 * n + 1.8)))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
    ticks = [text_safe(x) for x in labels]
    ax.set_xticks(range(n), ticks, rotation=30, ha="right")
    ax.set_yticks(range(n), ticks)
    ax.set(xlabel="predicted", ylabel="true")
    thresh = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color="white" if cm[i, j] > thresh else "black")
    ax.set_title(text_safe(title), fontsize=10)
    return _png(fig)
