"""The positive class: one rule (histokd.classes), stored with the model, read back by every stage."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from histokd.classes import class_names, negative_class, positive_class, stored_positive_class

SRC = Path(__file__).resolve().parents[1] / "src" / "histokd"


def test_positive_class_rule() -> None:
    assert positive_class(["normal", "tumour"]) == 1
    assert positive_class(["Tumor", "normal"]) == 0
    assert positive_class([" TUMOUR ", "normal"]) == 0
    assert positive_class(["tumour", "other"]) == 0
    assert positive_class(["a", "b", "c"]) == 2
    assert negative_class(["Tumor", "normal"]) == 1
    assert negative_class(["normal", "tumour"]) == 0
    assert negative_class(["a", "b", "c"]) == 0


def test_class_order_puts_positive_like_names_last() -> None:
    assert class_names(["malignant", "benign", None, float("nan"), ""]) == ["benign", "malignant"]
    assert positive_class(class_names(["cancer", "healthy"])) == 1
    assert class_names(["10", "2", "1"]) == ["1", "2", "10"]


def test_stored_positive_class_wins_over_the_rule() -> None:
    assert stored_positive_class(["normal", "tumour"], "normal") == 0
    assert stored_positive_class(["normal", "tumour"], {"positive_class": "normal"}) == 0
    assert stored_positive_class(["normal", "tumour"], b"normal") == 0
    assert stored_positive_class(["normal", "tumour"], None) == 1  # written before it was stored: the rule
    assert stored_positive_class(["normal", "tumour"], "gone") == 1


def test_the_model_stores_its_positive_class(tmp_path: Path) -> None:
    from histokd.methods.base import model_positive_class, read_model_meta, write_model_meta
    from histokd.predictions import read_prediction, write_prediction

    write_model_meta(tmp_path, "abmil", {}, ["normal", "Tumor"])
    meta = read_model_meta(tmp_path)
    assert meta["positive_class"] == "Tumor" and model_positive_class(meta) == 1

    class P:
        bag_probs = np.array([0.3, 0.7])
        instance_probs = np.array([[0.6, 0.4], [0.2, 0.8]])
        instance_scores = None
        mask = None

    path = write_prediction(tmp_path / "s.h5", P(), np.zeros((2, 2)),
                            {"classes": ["b", "a"], "positive_class": "b", "model_id": "m"})
    pred = read_prediction(path)
    assert pred.classes == ["b", "a"] and pred.positive == 0


def test_no_other_positive_class_rule() -> None:
    """Only histokd/classes.py spells the positive class names as a rule (a comparison or membership
    test against 'tumour' / 'tumor')."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "classes.py" or "synth" in path.parts or path.stem == "synth":  # synth names its own labels
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                if any(isinstance(v, str) and v.lower() in ("tumour", "tumor") for v in consts):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
