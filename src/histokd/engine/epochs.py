"""The one epoch loop: every method's training stage runs through :func:`fit_epochs`.

A method hands the engine its *hooks*: ``train_epoch(epoch) -> dict`` (one pass of its own steps:
teacher, student, sub-bags, regions; it returns what to log) and ``validate(epoch) -> dict`` (its
validation metrics) with ``score(metrics) -> value`` (higher is better; a float or a tuple compared in
order). The engine owns what must mean the same for every method and stage:

- the number of epochs (``max_epochs``; ``histokd train --max-epochs N`` caps every stage through
  :func:`stage_epochs`),
- seeding (:func:`~histokd.engine.fabric.seed_everything`, once, before the first epoch),
- precision (``precision``: each ``train_epoch`` runs under :func:`histokd.engine.runtime.autocast`;
  validation runs in fp32, so the checkpoint is chosen on the same numbers whatever the precision),
- checkpoint choice on validation (the modules' weights at the best-scoring epoch are restored at the
  end; a NaN score never counts as best) and early stopping (``patience`` epochs without improvement,
  never before ``min_epochs``),
- the history (one row per epoch, ``epoch`` first) and the log lines.

Without ``validate`` every epoch runs and the last weights are kept (nothing to choose on).
:func:`histokd.engine.fit_mil` is the bag-batch loop of the plain MIL teachers built on the same
:class:`EarlyStopping`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from histokd.engine.fabric import seed_everything
from histokd.engine.runtime import autocast

log = logging.getLogger("histokd")

Score = Any  # float or tuple of floats; higher is better


def stage_epochs(own: int, cap: int | None) -> int:
    """Epochs of one stage: its own count, capped by ``cap`` (``--max-epochs``; ``None`` = no cap)."""
    return own if cap is None else max(1, min(int(own), int(cap)))


def is_nan_score(value: Score) -> bool:
    vals = value if isinstance(value, tuple) else (value,)
    return any(isinstance(v, float) and math.isnan(v) for v in vals)


class EarlyStopping:
    """Tracks the best validation value; ``step`` returns True when it improved.

    ``mode="min"`` or ``"max"``; values may be floats or tuples (compared in order). A NaN never
    improves. Stops once ``patience`` epochs in a row did not improve and ``min_epochs`` have run.
    """

    def __init__(self, mode: str = "min", patience: int = 10, min_epochs: int = 1) -> None:
        self.mode, self.patience, self.min_epochs = mode, patience, min_epochs
        self.best: Score = math.inf if mode == "min" else -math.inf
        self.best_epoch = -1
        self.bad = 0

    def _better(self, value: Score) -> bool:
        if self.best_epoch < 0 and isinstance(value, tuple):  # first value of a tuple score
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def step(self, value: Score, epoch: int) -> bool:
        if not is_nan_score(value) and self._better(value):
            self.best, self.best_epoch, self.bad = value, epoch, 0
            return True
        self.bad += 1
        return False

    def should_stop(self, epoch: int) -> bool:
        return epoch + 1 >= self.min_epochs and self.bad >= self.patience


@dataclass
class EpochResult:
    """What :func:`fit_epochs` gives back; the modules hold the best epoch's weights (eval mode)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: Score = None
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def snapshot(modules: Mapping[str, nn.Module]) -> dict[str, dict[str, Any]]:
    """A deep copy of every module's state dict (the checkpoint kept in memory)."""
    return {k: copy.deepcopy(m.state_dict()) for k, m in modules.items()}


def fit_epochs(
    modules: Mapping[str, nn.Module],
    train_epoch: Callable[[int], dict[str, Any]],
    max_epochs: int,
    validate: Callable[[int], dict[str, Any]] | None = None,
    score: Callable[[dict[str, Any]], Score] | None = None,
    patience: int | None = None,
    min_epochs: int = 1,
    seed: int | None = None,
    deterministic: bool = True,
    stage: str = "train",
    on_best: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    precision: str = "32-true",
    autocast_passes: bool = True,
) -> EpochResult:
    """Run up to ``max_epochs`` epochs of ``train_epoch``; choose the epoch on ``validate``.

    ``modules``: the networks whose weights are the checkpoint (restored to the best epoch at the end,
    then put in eval mode). ``score(metrics)`` turns the validation metrics into the value to maximise
    (default: ``metrics["score"]``). ``patience=None``: no early stopping. ``seed``: seeds Python,
    NumPy and torch before the first epoch (``None``: the caller seeded). ``on_best(epoch)`` runs when
    an epoch becomes the best (to keep method state other than weights, e.g. a loss's class weights).
    ``on_epoch_end(row)`` sees each history row (progress bars). ``precision``: a resolved precision
    (:func:`histokd.engine.runtime.single_process`), ``32-true`` or ``bf16-mixed``, for the training passes;
    ``autocast_passes=False`` where the caller's steps autocast themselves (the Fabric loop), so the precision
    is only named in the stage's log line.
    """
    if seed is not None:
        seed_everything(seed, deterministic)
    t0 = time.perf_counter()
    score = score or (lambda m: m["score"])
    stopper = EarlyStopping("max", patience if patience is not None else max_epochs + 1, min_epochs)
    best_state: dict[str, dict[str, Any]] | None = None
    history: list[dict[str, Any]] = []
    for epoch in range(max_epochs):
        with autocast(precision) if autocast_passes else contextlib.nullcontext():
            row: dict[str, Any] = dict(train_epoch(epoch))
        if validate is not None:
            row.update(validate(epoch))
            value = score(row)
            if stopper.step(value, epoch):
                best_state = snapshot(modules)
                if on_best is not None:
                    on_best(epoch)
        else:
            stopper.best_epoch = epoch
        history.append({"epoch": epoch, **{k: v for k, v in row.items() if k != "epoch"}})
        log.debug("%s epoch %d: %s", stage, epoch, row)
        if on_epoch_end is not None:
            on_epoch_end(history[-1])
        if validate is not None and stopper.should_stop(epoch):
            break
    if best_state is not None:
        for k, m in modules.items():
            m.load_state_dict(best_state[k])
    for m in modules.values():
        m.eval()
    best = None if validate is None or stopper.best_epoch < 0 else stopper.best
    seconds = time.perf_counter() - t0
    log.info("%s: %d epochs in %.1f s; best epoch %d (validation score %s)%s", stage, len(history), seconds,
             stopper.best_epoch, best, "" if precision == "32-true" else f"; {precision}")
    return EpochResult(history, stopper.best_epoch, best, seconds)
