"""The one epoch loop (engine/epochs.py): epochs, early stopping, checkpoint choice, NaN and tuple scores."""

from __future__ import annotations

import math

import torch
from torch import nn

from histokd.engine import EarlyStopping, fit_epochs, stage_epochs


def _run(scores: list, max_epochs: int, patience: int | None, **kw):
    """A one-weight module whose weight is set to the epoch number; the validation score is scripted."""
    net = nn.Linear(1, 1, bias=False)

    def train_epoch(epoch: int) -> dict[str, float]:
        with torch.no_grad():
            net.weight.fill_(float(epoch))
        return {"train_loss": float(epoch)}

    res = fit_epochs({"net": net}, train_epoch, max_epochs, validate=lambda e: {"s": scores[e]},
                     score=lambda m: m["s"], patience=patience, **kw)
    return res, float(net.weight.detach())


def test_best_epoch_weights_are_restored_and_history_has_every_epoch():
    res, w = _run([0.1, 0.5, 0.3, 0.2], 4, None)
    assert (res.best_epoch, w, res.best_score, res.epochs_run) == (1, 1.0, 0.5, 4)
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    assert res.history[2] == {"epoch": 2, "train_loss": 2.0, "s": 0.3}


def test_patience_stops_and_min_epochs_delays_it():
    res, _ = _run([0.5, 0.4, 0.3, 0.2, 0.1], 5, 2)
    assert res.epochs_run == 3
    res, _ = _run([0.5, 0.4, 0.3, 0.2, 0.1], 5, 2, min_epochs=4)
    assert res.epochs_run == 4


def test_nan_never_best_and_tuples_compare_in_order():
    res, w = _run([math.nan, 0.2, math.nan], 3, None)
    assert (res.best_epoch, w) == (1, 1.0)
    res, w = _run([(0.5, -0.3), (0.5, -0.2), (0.4, 0.0)], 3, None)
    assert (res.best_epoch, w, res.best_score) == (1, 1.0, (0.5, -0.2))


def test_without_validation_every_epoch_runs_and_the_last_weights_stay():
    net = nn.Linear(1, 1, bias=False)
    seen = []

    def train_epoch(epoch: int) -> dict[str, float]:
        with torch.no_grad():
            net.weight.fill_(float(epoch))
        return {}

    res = fit_epochs({"net": net}, train_epoch, 3, on_epoch_end=seen.append)
    assert (res.epochs_run, res.best_epoch, float(net.weight.detach()), res.best_score) == (3, 2, 2.0, None)
    assert [r["epoch"] for r in seen] == [0, 1, 2]
    assert not net.training


def test_stage_epochs_caps_never_raises():
    assert stage_epochs(40, None) == 40
    assert stage_epochs(40, 1) == 1
    assert stage_epochs(40, 100) == 40


def test_early_stopping_min_mode_as_fit_mil_uses_it():
    s = EarlyStopping("min", patience=1)
    assert s.step(1.0, 0) and not s.step(math.nan, 1) and s.should_stop(1)
