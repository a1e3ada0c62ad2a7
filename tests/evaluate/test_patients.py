"""Slides to patients: one tumour slide makes a tumour patient; its probability is the max over its slides."""

from __future__ import annotations

import numpy as np

from histokd.evaluate.patients import aggregate_patients, has_patients
from histokd.pipeline.label import evaluate_predictions


def test_aggregate_patients_rule():
    ids = ["a1", "a2", "b1", "c1", "d1"]
    pids = ["A", "A", "B", None, "D"]
    y = np.array([0, 1, 0, 1, -1])
    P = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    out_ids, yp, Pp = aggregate_patients(ids, pids, y, P, positive=1)
    assert out_ids == ["A", "B", "c1", "D"]  # a slide without a patient is its own patient
    assert yp.tolist() == [1, 0, 1, -1]
    np.testing.assert_allclose(Pp[0], [0.3, 0.7])  # the slide with the highest P(positive)
    assert has_patients(pids, ids) and not has_patients(["A", "B", None], ["x", "y", "z"])


def test_label_metrics_per_patient():
    rows = [("a1", "test", 0, np.array([0.9, 0.1])), ("a2", "test", 1, np.array([0.2, 0.8])),
            ("b1", "test", 0, np.array([0.7, 0.3])), ("b2", "test", 0, np.array([0.6, 0.4])),
            ("c1", "test", 1, np.array([0.4, 0.6]))]
    patients = {"a1": "A", "a2": "A", "b1": "B", "b2": "B", "c1": "C"}
    m = evaluate_predictions(rows, [], ["normal", "tumour"], n_boot=20, patients=patients)
    pe = m["splits"]["test"]["patients"]
    assert pe["n_patients"] == 3 and pe["auc"]["value"] == 1.0  # A 0.8, C 0.6 (tumour) above B 0.4
    assert "patients" not in evaluate_predictions(rows, [], ["normal", "tumour"], n_boot=20)["splits"]["test"]
