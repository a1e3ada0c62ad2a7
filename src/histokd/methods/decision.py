"""The slide decision: where a two-class model's bag probability is cut, chosen once when it is trained.

A model's bag probabilities rank slides well long before they are calibrated: a max-tile rule over a
student's tile probabilities, a class-weighted loss or a small cohort all move every slide's probability
the same way, and a fixed cut at 0.5 then sends every slide to one class (bag AUC 0.92, accuracy 0.50).
So every method ends its ``fit`` with :func:`choose_decision`:

- the *calibration bags* of each class are its validation bags; a class with no validation bag (a tiny
  or one-sided validation set, or none) takes its training bags instead;
- the cut is the midpoint, on the logit scale, between the median positive-class probability of the
  negative calibration bags and that of the positive ones: the equal-prior rule between the two
  classes' typical scores. Medians, not a search for the best accuracy: with one tumour and three normal
  validation slides a search lands on whichever gap those four happen to leave, a median midpoint stays
  between the classes;
- when those medians are in the wrong order, the training bags' medians are taken instead, if they are in
  the right order: one or two validation bags per class are easily swapped by chance while the model ranks
  slides well (on the robustness suite's tuning cohorts, 810 folds, it cut the folds that send every test
  slide to one class at bag AUC >= 0.75 from 24 to 16, and those with balanced accuracy < 0.65 from 81 to
  73, at the same mean balanced accuracy; ``benchmarks/robustness_rules.py``, docs/methods.md "Round 3");
- when the training medians are in the wrong order too (a model that did not learn) the cut stays at 0.5.

Every training bag is scored as well, whichever class the validation set lacks, and the decision keeps the
scores it was chosen from (``calibration``: positive-class probabilities of the validation and training
bags of each class, 6 decimals), so a rule can be audited, and compared with another, from ``bench``'s kept
predictions. A saved model keeps the cut only (:func:`saved_decision`).

The cut is stored with the model (``decision`` in its meta) and applied in ``predict`` by shifting the bag
logits (:func:`apply_decision`), so every consumer that takes the most likely class (``bench``, ``label``,
``report``) decides the same way; rankings, and so AUCs, do not change. Multi-class models keep argmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

EPS = 1e-6


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _class_medians(scores: np.ndarray, pos: np.ndarray) -> dict[bool, float]:
    """Median logit of the finite ``scores`` of each class that has one (``pos``: True = positive class)."""
    out = {}
    for cls in (False, True):
        v = scores[(pos == cls) & np.isfinite(scores)]
        if len(v):
            out[cls] = float(np.median(_logit(v)))
    return out


def decision_threshold(train_scores: Sequence[float], train_pos: Sequence[bool], val_scores: Sequence[float],
                       val_pos: Sequence[bool]) -> dict[str, Any]:
    """The cut on positive-class bag probabilities (see the module docstring) -> ``{"threshold", "source",
    "calibration"}``."""
    ts, tp = np.asarray(train_scores, float), np.asarray(train_pos, bool)
    vs, vp = np.asarray(val_scores, float), np.asarray(val_pos, bool)
    cal = calibration_record(ts, tp, vs, vp)
    v_med, t_med = _class_medians(vs, vp), _class_medians(ts, tp)
    med = {**t_med, **v_med}  # each class from validation where it has bags there, else from training
    src = {cls: "validation" if cls in v_med else "training" for cls in med}
    if len(med) == 2 and med[True] <= med[False] and v_med and len(t_med) == 2:
        med = t_med  # validation does not order the classes: the training bags place the cut
        src = dict.fromkeys((False, True), "training (the validation bags do not order the classes)")
    if len(med) < 2 or med[True] <= med[False]:
        return {"threshold": 0.5, "source": "default (the calibration bags do not order the classes)",
                "calibration": cal}
    mid = 0.5 * (med[True] + med[False])
    th = float(1.0 / (1.0 + math.exp(-mid)))
    where = src[False] if src[False] == src[True] else f"negatives: {src[False]}, positives: {src[True]}"
    return {"threshold": th, "source": where, "calibration": cal}


def calibration_record(train_scores: np.ndarray, train_pos: np.ndarray, val_scores: np.ndarray,
                       val_pos: np.ndarray) -> dict[str, list[float]]:
    """The scores a cut was chosen from, by part and class: ``{"validation_positive": [...], ...}``."""
    out: dict[str, list[float]] = {}
    for part, sc, ps in (("validation", val_scores, val_pos), ("training", train_scores, train_pos)):
        for cls, name in ((True, "positive"), (False, "negative")):
            out[f"{part}_{name}"] = [round(float(x), 6) for x in sc[(ps == cls) & np.isfinite(sc)]]
    return out


def choose_decision(predict_pos: Callable[[Any], float], train: Sequence[Any], train_pos: Sequence[bool],
                    val: Sequence[Any], val_pos: Sequence[bool]) -> dict[str, Any]:
    """``predict_pos(bag)`` -> positive-class bag probability, over every training and validation bag."""
    ts = [predict_pos(train[i]) for i in range(len(train_pos))]
    vs = [predict_pos(val[i]) for i in range(len(val_pos))]
    return decision_threshold(ts, [bool(c) for c in train_pos], vs, [bool(c) for c in val_pos])


def saved_decision(decision: dict[str, Any] | None) -> dict[str, Any] | None:
    """The decision as a model folder stores it: the cut and its source, without the ``calibration`` scores
    (one per training slide: a detail of the training cohort, which a model folder or bundle does not carry;
    they stay in the in-memory labeller and in ``bench``'s kept predictions)."""
    return None if decision is None else {k: v for k, v in decision.items() if k != "calibration"}


def apply_decision(bag_probs: np.ndarray, decision: dict[str, Any] | None, positive: int) -> np.ndarray:
    """Two-class ``bag_probs`` [2] shifted on the logit scale so that the cut falls at 0.5."""
    if not decision or len(bag_probs) != 2:
        return bag_probs
    th = float(decision.get("threshold", 0.5))
    if not 0.0 < th < 1.0 or th == 0.5:
        return bag_probs
    z = float(_logit(bag_probs[positive])) - float(_logit(th))
    p = 1.0 / (1.0 + math.exp(-z))
    out = np.empty_like(bag_probs)
    out[positive], out[1 - positive] = p, 1.0 - p
    return out
