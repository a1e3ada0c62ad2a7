"""The slide cut (histokd.methods.decision): chosen between the classes' typical scores, never a collapse
onto one class when the scores rank the slides, and applied without changing any ranking."""

from __future__ import annotations

import numpy as np
import pytest

from histokd.methods.decision import apply_decision, choose_decision, decision_threshold


def test_cut_lies_between_the_validation_medians():
    d = decision_threshold([], [], [0.7, 0.8, 0.95, 0.97], [False, False, True, True])
    assert d["source"] == "validation"
    assert 0.8 < d["threshold"] < 0.95  # a fixed 0.5 would call every slide tumour


def test_one_sided_validation_takes_the_missing_class_from_training():
    d = decision_threshold([0.1, 0.2, 0.9, 0.95], [False, False, True, True], [0.6, 0.7, 0.65], [False] * 3)
    assert "negatives: validation" in d["source"] and "positives: training" in d["source"]
    assert 0.7 < d["threshold"] < 0.95


def test_a_model_that_did_not_learn_keeps_half():
    assert decision_threshold([], [], [0.9, 0.2], [False, True])["threshold"] == 0.5
    assert decision_threshold([], [], [], [])["threshold"] == 0.5
    # training does not order the classes either
    assert decision_threshold([0.8, 0.3], [False, True], [0.9, 0.2], [False, True])["threshold"] == 0.5


def test_swapped_validation_bags_take_the_cut_from_training():
    """Two validation bags in the wrong order say little; the training bags' medians place the cut instead
    of a fixed 0.5, which would send every test slide of a model scoring in 0.54-0.56 to one class."""
    d = decision_threshold([0.53, 0.54, 0.57, 0.58], [False, False, True, True], [0.56, 0.55], [False, True])
    assert d["source"].startswith("training (the validation bags do not order")
    assert 0.54 < d["threshold"] < 0.57


def test_choose_decision_keeps_the_scores_it_chose_from():
    seen = []

    def score(b):
        seen.append(b)
        return b

    d = choose_decision(score, [0.1, 0.9, 0.2], [False, True, False], [0.3, 0.4], [False, False])
    assert sorted(seen) == [0.1, 0.2, 0.3, 0.4, 0.9]  # every bag, so a rule can be audited afterwards
    assert d["calibration"] == {"validation_positive": [], "validation_negative": [0.3, 0.4],
                                "training_positive": [0.9], "training_negative": [0.1, 0.2]}
    # the cut itself still takes each class from validation where it can: negatives 0.3-0.4, positive 0.9
    assert "negatives: validation" in d["source"] and 0.4 < d["threshold"] < 0.9


@pytest.mark.parametrize("positive", [0, 1])
def test_apply_decision_moves_the_cut_and_keeps_the_order(positive):
    d = {"threshold": 0.85}
    raw = np.linspace(0.5, 0.99, 30)
    out = []
    for p in raw:
        probs = np.zeros(2, np.float32)
        probs[positive], probs[1 - positive] = p, 1 - p
        q = apply_decision(probs, d, positive)
        assert abs(q.sum() - 1) < 1e-6
        out.append(q[positive])
    out = np.asarray(out)
    assert np.all(np.diff(out) > 0)  # same ranking: AUC unchanged
    assert np.array_equal(out >= 0.5, raw >= 0.85)


def test_multi_class_and_missing_decision_are_left_alone():
    p = np.array([0.2, 0.3, 0.5], np.float32)
    assert apply_decision(p, {"threshold": 0.9}, 1) is p
    q = np.array([0.3, 0.7], np.float32)
    assert apply_decision(q, None, 1) is q


def test_mil_method_stores_and_reloads_its_cut(tmp_path):
    """A trained ABMIL keeps its cut in config.yaml; the reloaded model decides the same way."""
    import histokd.methods  # noqa: F401
    from histokd.data.bags import BagDataset
    from histokd.methods.base import METHODS, load_labeler

    rng = np.random.default_rng(0)
    feats, labels = [], []
    for i in range(16):
        x = rng.normal(0, 1, (12, 8)).astype(np.float32)
        if i % 2:
            x[:3, 0] += 3.0
        feats.append(x)
        labels.append("tumour" if i % 2 else "normal")
    ds = BagDataset.from_arrays(feats, labels)
    tr, va = ds.subset(list(range(12))), ds.subset(list(range(12, 16)))
    lab = METHODS.get("abmil")(seed=0).fit(tr, va, {"train": {"max_epochs": 5}})
    assert lab.decision is not None and 0 < lab.decision["threshold"] < 1
    lab.save(tmp_path / "m")
    back = load_labeler(tmp_path / "m")
    assert back.decision["threshold"] == pytest.approx(lab.decision["threshold"])
    assert back.decision["source"] == lab.decision["source"]
    assert len(sum(lab.decision["calibration"].values(), [])) == 16  # every training and validation bag
    assert "calibration" not in back.decision  # the training cohort's scores stay out of the model folder
    x = feats[1]
    assert np.allclose(back.predict(x).bag_probs, lab.predict(x).bag_probs, atol=1e-6)
