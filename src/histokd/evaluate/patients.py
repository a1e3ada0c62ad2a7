"""Slides to patients: the one rule by which slide predictions and labels become a patient's.

A patient is positive when any of its slides is; its probabilities are those of its slide with the highest
positive-class probability (so a patient's P(positive) is the max over its slides, the rule a pathologist
applies: one tumour slide makes a tumour case). Slides without a patient id are patients of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def aggregate_patients(slide_ids: Sequence[str], patients: Sequence[str | None], labels: np.ndarray,
                       probs: np.ndarray, positive: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per patient (in order of first appearance): its id, its label (``positive`` if any slide has it, else its
    slides' most common label; ``-1`` where no slide is labelled) and its probability row [P, C]."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, np.float64)
    groups: dict[str, list[int]] = {}
    for i, (sid, pid) in enumerate(zip(slide_ids, patients)):
        key = str(pid) if pid not in (None, "") else str(sid)
        groups.setdefault(key, []).append(i)
    ids, ys, rows = [], [], []
    for key, idx in groups.items():
        lab = labels[idx]
        known = lab[lab >= 0]
        if not len(known):
            y = -1
        elif (known == positive).any():
            y = positive
        else:
            vals, counts = np.unique(known, return_counts=True)
            y = int(vals[counts.argmax()])
        ids.append(key)
        ys.append(y)
        rows.append(probs[idx[int(np.argmax(probs[idx, positive]))]])
    return ids, np.asarray(ys, int), np.stack(rows) if rows else np.zeros((0, probs.shape[1] if probs.ndim == 2 else 0))


def has_patients(patients: Sequence[str | None], slide_ids: Sequence[str]) -> bool:
    """Whether patient ids group slides at all (some patient has two or more slides)."""
    keys = [str(p) for p, s in zip(patients, slide_ids) if p not in (None, "")]
    return len(keys) > len(set(keys))
