"""WENO: calibrated mining, a planted toy problem, save/load (the shared rules: test_distill_rules.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from histokd.errors import InputError
from histokd.methods.distill.rules import hard_positive_keep, weighted_soft_ce
from histokd.methods.weno import Weno, WenoLabeler
from planted import planted_bags  # tests/methods/planted.py (rootdir import)


def test_mining_uses_calibrated_student_probabilities() -> None:
    from histokd.methods.weno import _student_probs, student_logit_offset

    enc, head = torch.nn.Identity(), torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    x = torch.tensor([[0.0, 1.0], [0.0, 3.0]])  # logit gaps 1 and 3
    off = torch.as_tensor(student_logit_offset(torch.tensor([0.1, 0.9]), neg=0))  # log 9 ~ 2.2
    raw = _student_probs(enc, head, x)[:, 1]
    cal = _student_probs(enc, head, x, off)[:, 1]
    assert (raw > 0.5).all()  # uncalibrated, both tiles would be mined at 0.5
    assert hard_positive_keep(cal, 0.5).tolist() == [True, False]  # calibrated: only the confident one


def test_weno_recovers_planted_instances(tmp_path) -> None:
    tr, va, te = planted_bags(60, 0), planted_bags(20, 1), planted_bags(30, 2)
    cfg = {"epochs": 6, "hpm_warmup": 3, "min_student_steps": 20, "encoder_dim": 64, "student_hidden": [64],
           "teacher_args": {"hidden": [64], "attn_dim": 32}}
    lab = Weno().fit(tr, va, cfg)
    probs, y, bag_p = [], [], []
    for x, il in zip(te.features, te.instance_labels):
        pred = lab.predict(x.numpy())
        assert pred.instance_probs.shape == (len(x), 2)
        assert np.allclose(pred.instance_probs.sum(1), 1, atol=1e-5)
        assert pred.instance_scores.shape == (len(x),)
        probs.append(pred.instance_probs[:, 1])
        bag_p.append(pred.bag_probs[1])
        y.append(il)
    assert roc_auc_score(np.concatenate(y), np.concatenate(probs)) > 0.9
    assert roc_auc_score(te.labels, bag_p) > 0.8
    # save / load give identical predictions
    lab.save(tmp_path)
    again = WenoLabeler.load(tmp_path)
    x = te.features[1].numpy()
    assert np.allclose(again.predict(x).instance_probs, lab.predict(x).instance_probs, atol=1e-6)
    with pytest.raises(InputError):
        lab.predict(np.zeros((3, 5), np.float32))


def test_logit_offset_undoes_class_weights() -> None:
    """Minimising the weighted soft CE gives p ∝ w·t; the stored offset brings p back to t."""
    from histokd.methods.weno import student_logit_offset

    w = torch.tensor([0.1, 0.9])
    t = torch.tensor([[0.7, 0.3]])
    z = torch.zeros(1, 2, requires_grad=True)
    opt = torch.optim.SGD([z], lr=2.0)
    for _ in range(500):
        opt.zero_grad()
        weighted_soft_ce(z, t, w).backward()
        opt.step()
    biased = torch.softmax(z.detach(), -1)
    assert biased[0, 1] > 0.6  # the weights push the positive probability far above 0.3
    fixed = torch.softmax(z.detach() - torch.tensor(student_logit_offset(w, 0)), -1)
    assert torch.allclose(fixed, t, atol=1e-3)


@pytest.mark.parametrize("source", ["singleton", "fused"])
def test_pseudo_labels_from_the_teachers_instance_classifier(source: str) -> None:
    """``pseudo_source``: targets from the teacher's singleton classifier (or fused with attention) train a
    student that finds the planted instances, and negative bags still get target 0."""
    from histokd.methods.distill.bags import as_bags
    from histokd.methods.weno import _pseudo_targets
    from histokd.models import build_model

    tr, va, te = planted_bags(60, 0), planted_bags(20, 1), planted_bags(30, 2)
    cfg = {"epochs": 6, "hpm_warmup": 3, "min_student_steps": 20, "encoder_dim": 64, "student_hidden": [64],
           "teacher_args": {"hidden": [64], "attn_dim": 32}, "pseudo_source": source}
    lab = Weno().fit(tr, va, cfg)
    probs = np.concatenate([lab.predict(x.numpy()).instance_probs[:, 1] for x in te.features])
    assert roc_auc_score(np.concatenate(te.instance_labels), probs) > 0.9
    b = as_bags(tr)
    t = _pseudo_targets(b, torch.nn.Identity(), build_model("abmil", b.dim, 2).eval(), "negative", 0, 2, 0.95, source)
    sizes = [len(x) for x in b.features]
    parts = torch.split(t[:, 1], sizes)
    assert all(float(p.max()) == 0.0 for p, y in zip(parts, b.labels) if int(y) == 0)
    assert ((t >= 0) & (t <= 1)).all()


def test_blend_tile_score_is_the_product_of_student_and_teacher(tmp_path) -> None:
    """``tile_score=blend``: tile probabilities = softmax of the mean of the student's and the teacher's
    singleton logits; it survives save / load, and the slide output does not change."""
    tr, va, te = planted_bags(40, 0), planted_bags(12, 1), planted_bags(10, 2)
    cfg = {"epochs": 3, "hpm_warmup": 1, "min_student_steps": 10, "encoder_dim": 32, "student_hidden": [32],
           "teacher_args": {"hidden": [32], "attn_dim": 16}, "tile_score": "blend"}
    lab = Weno().fit(tr, va, cfg)
    assert lab.meta["tile_score"] == "blend"
    x = te.features[1].numpy()
    xt = lab._input(x)
    with torch.no_grad():
        want = torch.softmax(0.5 * (lab.student_logits(xt).float() + lab.teacher_instance_logits(xt)), -1).numpy()
        student_only = torch.softmax(lab.student_logits(xt), -1).numpy()
    got = lab.predict(x)
    np.testing.assert_allclose(got.instance_probs, want, atol=1e-6)
    assert not np.allclose(got.instance_probs, student_only, atol=1e-4)
    np.testing.assert_allclose(lab.predict(x, tile_score="student").instance_probs, student_only, atol=1e-6)
    # for two classes the blend is the mean of the two log-odds, so it can be rebuilt from saved probabilities
    t = lab.teacher_singleton_probs(x)[:, 1]
    lo = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    np.testing.assert_allclose(lo(got.instance_probs[:, 1]), 0.5 * (lo(student_only[:, 1]) + lo(t)), atol=1e-4)
    lab.save(tmp_path)
    again = WenoLabeler.load(tmp_path)
    np.testing.assert_allclose(again.predict(x).instance_probs, got.instance_probs, atol=1e-6)
    lab.meta["tile_score"] = "student"
    np.testing.assert_allclose(lab.predict(x).instance_probs, student_only, atol=1e-6)
    # the slide output does not depend on the tile rule: the top-k / max rules read the student's own tiles
    np.testing.assert_allclose(lab.predict(x).bag_probs, got.bag_probs, atol=1e-6)
    assert lab.meta["bag_score"] == "top"


def test_top_bag_score_is_the_mean_of_the_top_student_tiles(tmp_path) -> None:
    """``bag_score=top``: the bag probability is the mean of the student's ``bag_top_k`` highest tile
    probabilities, shifted by the slide cut chosen with that rule; it survives save / load."""
    from histokd.methods.decision import apply_decision
    from histokd.methods.distill.rules import top_bag_probs

    tr, va, te = planted_bags(40, 0), planted_bags(12, 1), planted_bags(10, 2)
    cfg = {"epochs": 3, "hpm_warmup": 1, "min_student_steps": 10, "encoder_dim": 32, "student_hidden": [32],
           "teacher_args": {"hidden": [32], "attn_dim": 16}, "bag_score": "top", "bag_top_k": 2}
    lab = Weno().fit(tr, va, cfg)
    assert lab.meta["bag_score"] == "top" and lab.meta["bag_top_k"] == 2
    x = te.features[3].numpy()
    got = lab.predict(x)
    raw = top_bag_probs(torch.as_tensor(got.instance_probs), lab.neg, 2).numpy()
    np.testing.assert_allclose(got.bag_probs, apply_decision(raw, lab.meta["decision"], 1 - lab.neg), atol=1e-6)
    np.testing.assert_allclose(lab.predict(x, bag_score="top").bag_probs, raw, atol=1e-6)  # one call: no cut
    lab.save(tmp_path)
    np.testing.assert_allclose(WenoLabeler.load(tmp_path).predict(x).bag_probs, got.bag_probs, atol=1e-6)
    with pytest.raises(InputError):
        Weno().fit(tr, va, {**cfg, "bag_top_k": 0})
