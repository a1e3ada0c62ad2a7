"""Which class is positive: the one rule, decided once when a model is trained and stored with it; and the
order of the class names it applies to (negatives first, positives last).

The positive class of tumour-vs-normal is the class named ``tumour`` or ``tumor`` (any case, surrounding
spaces ignored), else the last class (contract 7). :func:`histokd.methods.base.write_model_meta` stores its
name as ``positive_class`` in the model's ``config.yaml``; labelling writes it into every prediction file
and ``metrics.json``, and report, outputs and methods read it from there (:func:`stored_positive_class`).
This module sits on the bottom floor so that every package (segmentation included) uses the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_POSITIVE_NAMES = ("tumour", "tumor")
#: Label spellings ordered first (negative-like) and last (positive-like) by :func:`class_names`.
NEGATIVE_NAMES = {"normal", "negative", "neg", "benign", "healthy", "0", "false", "no", "non-tumour", "non-tumor"}
POSITIVE_NAMES = {"tumour", "tumor", "positive", "pos", "malignant", "cancer", "metastasis", "1", "true", "yes"}


def class_names(labels: Sequence[Any]) -> list[str]:
    """Ordered class names for raw labels: negatives first, positives last, else sorted (numeric if possible);
    empty / NaN / None labels are left out. So with no class named tumour, the positive class (the last)
    is the positive-like one."""
    names = sorted({str(v).strip() for v in labels if _known(v)})
    try:
        return sorted(names, key=float)
    except ValueError:
        pass

    def key(n: str) -> tuple[int, str]:
        low = n.lower()
        return (0 if low in NEGATIVE_NAMES else 2 if low in POSITIVE_NAMES else 1), n

    return sorted(names, key=key)


def _known(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and v != v:  # NaN
        return False
    return str(v).strip() != ""


def positive_class(classes: Sequence[Any]) -> int:
    """Index of the positive class in ``classes``: the one named ``tumour``/``tumor`` (any case), else the last."""
    low = [str(c).strip().lower() for c in classes]
    for name in _POSITIVE_NAMES:
        if name in low:
            return low.index(name)
    return len(low) - 1


def negative_class(classes: Sequence[Any]) -> int:
    """Index of the class whose bags hold only negative instances: for two classes the one that is not
    positive; else the first class."""
    if len(classes) == 2:
        return 1 - positive_class(classes)
    return 0


def stored_positive_class(classes: Sequence[Any], stored: Any = None) -> int:
    """Index of the positive class as stored with a model (``config.yaml`` / prediction attr
    ``positive_class``: a class name, or a mapping holding it); the rule of :func:`positive_class` for
    artefacts written before it was stored, or when the stored name is not one of ``classes``."""
    if isinstance(stored, Mapping):
        stored = stored.get("positive_class")
    if isinstance(stored, bytes):
        stored = stored.decode("utf-8")
    names = [str(c) for c in classes]
    if isinstance(stored, str) and stored in names:
        return names.index(stored)
    return positive_class(classes)
