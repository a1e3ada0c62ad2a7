"""Training engine: class weights, early stopping, bag cap, determinism, learning on digit bags."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from histokd.data.bags import BagDataset
from histokd.data.benchmarks import digit_bags
from histokd.engine import EarlyStopping, TrainerConfig, TrainView, class_weights, evaluate_bags, fit_mil
from histokd.models import build_model


def test_class_weights_balanced() -> None:
    w = class_weights(np.array([0, 0, 0, 1]), 2, "balanced")
    torch.testing.assert_close(w, torch.tensor([4 / 6, 4 / 2]))
    assert class_weights(np.array([0, 1]), 2, "none") is None


def test_early_stopping() -> None:
    s = EarlyStopping("min", patience=2, min_epochs=1)
    assert s.step(1.0, 0) and not s.step(1.5, 1) and not s.should_stop(1)
    assert not s.step(1.2, 2) and s.should_stop(2) and s.best_epoch == 0


def test_train_view_caps_reproducibly() -> None:
    ds = BagDataset.from_arrays([np.arange(100, dtype=np.float32).reshape(50, 2)], ["a"],
                                instance_labels=[np.arange(50) % 2])
    v = TrainView(ds, 10, seed=1)
    a = v[0].features[:, 0].numpy()
    assert len(a) == 10 and (np.diff(a) > 0).all()  # tile order kept
    np.testing.assert_array_equal(a, TrainView(ds, 10, seed=1)[0].features[:, 0].numpy())
    v.set_epoch(1)
    assert not np.array_equal(a, v[0].features[:, 0].numpy())
    assert len(v[0].instance_labels) == 10
    assert len(TrainView(ds, None)[0].features) == 50  # no cap


def test_train_view_instance_dropout() -> None:
    ds = BagDataset.from_arrays([np.arange(100, dtype=np.float32).reshape(50, 2),
                                 np.zeros((1, 2), np.float32)], ["a", "b"])
    v = TrainView(ds, None, seed=0, instance_dropout=0.3)
    a = v[0].features[:, 0].numpy()
    assert len(a) == 35 and (np.diff(a) > 0).all()  # ceil(0.7 * 50) tiles, in order
    assert len(v[1].features) == 1  # a bag of one keeps its tile
    assert len(TrainView(ds, 20, seed=0, instance_dropout=0.3)[0].features) == 20  # the cap still applies
    v.set_epoch(1)
    assert not np.array_equal(a, v[0].features[:, 0].numpy())
    with pytest.raises(ValueError):
        TrainerConfig(instance_dropout=1.0)


def _fit(seed: int, val: BagDataset | None, ds: BagDataset, **kw):
    torch.manual_seed(seed)
    model = build_model("abmil", ds.dim, 2, {"hidden": [32], "attn_dim": 16})
    cfg = TrainerConfig(max_epochs=kw.pop("epochs", 6), lr=1e-3, batch_size=4, accelerator="cpu", **kw)
    return fit_mil(model, ds, val, cfg, seed=seed)


def test_fit_learns_and_is_deterministic(tmp_path) -> None:
    ds = digit_bags(target=9, n_bags=80, bag_size=8, witness_rate=0.2, seed=0)
    tr, va = ds.subset(range(60)), ds.subset(range(60, 80))
    r1 = _fit(0, va, tr, epochs=12, patience=20)
    assert evaluate_bags(r1.model, va)["auc"] > 0.75  # chance is 0.5
    assert len(r1.history) == 12 and "val_loss" in r1.history[0]
    r2 = _fit(0, va, tr, epochs=12, patience=20)
    for (k, a), (_, b) in zip(r1.model.state_dict().items(), r2.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_checkpoint_is_best_validation_epoch() -> None:
    ds = digit_bags(target=9, n_bags=40, bag_size=6, witness_rate=0.2, seed=2)
    r = _fit(1, ds.subset(range(30, 40)), ds.subset(range(30)), epochs=8, patience=100)
    losses = [h["val_loss"] for h in r.history]
    assert r.best_epoch == int(np.argmin(losses))
    assert evaluate_bags(r.model, ds.subset(range(30, 40)))["loss"] == pytest_approx(min(losses))


def pytest_approx(v: float):
    import pytest

    return pytest.approx(v, rel=1e-4, abs=1e-5)


def test_no_val_keeps_last_epoch_and_logs(tmp_path) -> None:
    ds = digit_bags(n_bags=10, bag_size=5, seed=3)
    torch.manual_seed(0)
    model = build_model("meanpool", ds.dim, 2)
    cfg = TrainerConfig(max_epochs=2, accelerator="cpu", max_instances=3)
    res = fit_mil(model, ds, None, cfg, seed=0, log_path=tmp_path / "train.log")
    assert res.best_epoch == 1
    assert "epoch 1" in (tmp_path / "train.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ddp_spawn_two_cpu_processes() -> None:
    """2 CPU ranks (gloo): every bag seen once per epoch across the shards, rank 0's weights returned,
    the model learns; the spawn result travels through a file (a >64 KiB return value used to hang)."""
    ds = digit_bags(target=9, n_bags=48, bag_size=6, witness_rate=0.25, seed=4)
    tr, va = ds.subset(range(36)), ds.subset(range(36, 48))
    torch.manual_seed(0)
    model = build_model("abmil", ds.dim, 2, {"hidden": [256], "attn_dim": 16})
    assert sum(p.numel() * 4 for p in model.parameters()) > 65536  # more than a pipe buffer of weights
    cfg = TrainerConfig(max_epochs=8, lr=2e-3, batch_size=2, accelerator="cpu", devices=2, strategy="ddp_spawn",
                        patience=100)
    r = fit_mil(model, tr, va, cfg, seed=0)
    assert len(r.history) == 8
    assert all(h["train_bags"] == 36 for h in r.history)  # 18 per rank, gathered
    assert r.model is model and r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert evaluate_bags(r.model, va)["loss"] == pytest.approx(r.history[r.best_epoch]["val_loss"], rel=1e-4)


def test_lr_schedule_warmup_and_cosine() -> None:
    from histokd.engine.loop import make_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    cfg = TrainerConfig(lr=1.0, max_epochs=4, lr_schedule="cosine", warmup_epochs=1, min_lr_ratio=0.1)
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = make_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1)  # warm-up: step 1 of 10
    assert lrs[9] == pytest.approx(1.0)  # warm-up done
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))  # then monotone decay
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # the floor at max_epochs
    assert make_scheduler(opt, TrainerConfig(), 10) is None  # constant, no warm-up: nothing to schedule


def test_cosine_schedule_trains() -> None:
    ds = digit_bags(n_bags=40, seed=1)
    cfg = TrainerConfig(max_epochs=3, lr=1e-3, lr_schedule="cosine")
    model = build_model("abmil", ds.dim, 2)
    res = fit_mil(model, ds, None, cfg, seed=0)
    assert len(res.history) == 3 and np.isfinite(res.history[-1]["train_loss"])
