"""The IFKD loop on slides held in memory: K rounds of student training, fusion and role swaps.

State of the loop (He et al. 2024, "iterative fusion knowledge distillation", as histokd does it):

* the **teacher** is either the MIL pseudo-masks (round 0) or a segmentation net; it carries its maps
  on the train slides, its maps on the val slides and its validation score;
* the **student** is a segmentation net trained for ``epochs_per_round`` epochs on the current
  targets; targets on tumour-free slides are 0 everywhere (the slide label is known);
* after each round the student's maps are computed; the next round's target is the fusion
  ``w_T · teacher_map + (1 - w_T) · student_map``;
* **role swap**: when the student's validation score is strictly higher than the teacher's, the two
  exchange roles: the student becomes the teacher (weights, maps, score), and the old teacher becomes
  the student (its weights are loaded into the student net when it is a net; when it is the MIL
  pseudo-mask there are no weights, so the student keeps training from its own); the fusion then mixes
  the new teacher's maps with the old teacher's.

Unlike the reference code, the validation split alone chooses swaps, the returned net and the
calibration (never the test split), and a swap needs no file on disk (the best weights are held in
memory), so a student that never beats the teacher does not crash the loop: the best student by
validation score is returned, with a warning.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from histokd.engine.epochs import fit_epochs
from histokd.engine.fabric import seed_everything
from histokd.evaluate.pixel import dice
from histokd.models.segnet import build_segnet
from histokd.progress import progress
from histokd.segmentation.losses import fuse_maps, seg_loss
from histokd.segmentation.regions import SlideImage, predict_map, sample_regions, smooth, to_tensor

log = logging.getLogger("histokd")

THRESHOLDS = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2).tolist())


@dataclass
class LoopSettings:
    """What the loop needs (a subset of ``IFKDConfig``)."""

    net: str = "sidenet"
    widths: Sequence[int] = (16, 32, 64)
    side_weights: Sequence[float] | None = None
    rounds: int = 3
    epochs_per_round: int = 10
    regions_per_slide: int = 8
    region_size: int = 96
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    teacher_weight: float = 0.5
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    example_weighting: Literal["hard", "easy", "none"] = "hard"
    temperature: float = 1.0
    window: int = 512
    seed: int = 0
    precision: str = "32-true"  # resolved (engine.runtime.single_process): 32-true or bf16-mixed


@dataclass
class Role:
    """One participant: ``state`` is None for the MIL pseudo-masks, else a net state dict."""

    name: str
    state: dict[str, torch.Tensor] | None
    train_maps: list[np.ndarray]
    val_maps: list[np.ndarray]
    score: float


@dataclass
class RoundRecord:
    round: int
    teacher: str
    teacher_val: float
    student_val: float
    swapped: bool
    train_loss: float
    epochs: int = 0  # student epochs of the round

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LoopResult:
    state: dict[str, torch.Tensor]  # weights of the returned segmentation net
    source: str  # which participant they come from
    val_score: float
    mil_val_score: float
    history: list[RoundRecord] = field(default_factory=list)
    round_states: list[dict[str, torch.Tensor]] = field(default_factory=list)  # each round's student


def should_swap(student_score: float, teacher_score: float) -> bool:
    """Roles swap exactly when the student's validation score is strictly higher (NaN never swaps)."""
    return bool(np.isfinite(student_score) and (not np.isfinite(teacher_score) or student_score > teacher_score))


def clamp_negatives(maps: list[np.ndarray], slides: Sequence[SlideImage]) -> list[np.ndarray]:
    """Zero the targets of tumour-free slides (label 0): the slide label is ground truth there."""
    return [np.zeros_like(m) if s.label == 0 else m.astype(np.float32) for m, s in zip(maps, slides, strict=True)]


def make_scorer(val: Sequence[SlideImage], mil_val_maps: Sequence[np.ndarray]) -> tuple[Callable[..., float], str]:
    """Validation score of a list of val maps, and its name.

    With ground-truth masks on the val slides: the best (over :data:`THRESHOLDS`) pooled Dice over
    the val slides with a mask. Without: agreement with the MIL pseudo-masks, i.e. the best pooled
    Dice against ``mil > 0.5`` on tumour slides with tumour-free slides' targets 0 (so false positives
    on negative slides count). That proxy favours the MIL teacher (it agrees with itself), so swaps
    then happen only when the student also cleans up negative slides.
    """
    with_gt = [i for i, s in enumerate(val) if s.gt is not None]
    if with_gt:
        refs = {i: val[i].gt for i in with_gt}
        name = "val_dice_gt"
    else:
        refs = {
            i: (np.zeros(s.target.shape, bool) if s.label == 0 else mil_val_maps[i] > 0.5) for i, s in enumerate(val)
        }
        name = "val_dice_pseudo"

    def score(maps: Sequence[np.ndarray], sigma: float = 0.0, return_threshold: bool = False) -> Any:
        best, best_t = float("nan"), 0.5
        sm = {i: smooth(maps[i], sigma) for i in refs}
        for t in THRESHOLDS:
            pred = np.concatenate([(sm[i] >= t).ravel() for i in refs])
            ref = np.concatenate([refs[i].ravel() for i in refs])
            d = dice(pred[None], ref[None])
            if not np.isfinite(best) or d > best:
                best, best_t = d, t
        return (best, best_t) if return_threshold else best

    return score, name


def _train_round(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    slides: list[SlideImage],
    cfg: LoopSettings,
    rng: np.random.Generator,
    desc: str,
) -> tuple[float, int]:
    """One round of student training: ``epochs_per_round`` epochs through the engine's epoch loop (no
    per-epoch validation: the round's student is scored after the round). Returns the mean step loss and
    the number of epochs run."""
    losses: list[float] = []

    def train_epoch(epoch: int) -> dict[str, float]:
        net.train()
        first = len(losses)
        imgs, tgts = sample_regions(slides, cfg.regions_per_slide, cfg.region_size, rng)
        order = rng.permutation(len(imgs))
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            x = to_tensor(imgs[idx])
            y = torch.from_numpy(tgts[idx]).unsqueeze(1)
            out = net(x)
            side_probs = [torch.sigmoid(s) for s in out.side_logits]
            loss = seg_loss(side_probs, out.fused, y, cfg.dice_weight, cfg.ce_weight, cfg.example_weighting,
                            cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return {"train_loss": float(np.mean(losses[first:])) if len(losses) > first else float("nan")}

    with progress() as bar:
        task = bar.add_task(desc, total=cfg.epochs_per_round, unit="epoch")
        res = fit_epochs({"student": net}, train_epoch, cfg.epochs_per_round, stage=desc,
                         on_epoch_end=lambda row: bar.advance(task), precision=cfg.precision)
    return (float(np.mean(losses)) if losses else float("nan")), res.epochs_run


def _maps(net: torch.nn.Module, slides: Sequence[SlideImage], window: int) -> list[np.ndarray]:
    return [predict_map(net, s.image, window=window) for s in slides]


def run_ifkd(
    train: list[SlideImage],
    val: list[SlideImage],
    cfg: LoopSettings,
    mil_val_maps: list[np.ndarray] | None = None,
) -> LoopResult:
    """Run the IFKD rounds. ``train[i].target`` / ``val[i].target`` hold the MIL pseudo-masks on entry.

    Returns the weights of the validation-best segmentation net, its score and the per-round history.
    """
    if not train:
        raise ValueError("IFKD needs at least one training slide")
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    mil_val = list(mil_val_maps) if mil_val_maps is not None else [s.target.copy() for s in val]
    scorer, score_name = make_scorer(val, mil_val) if val else (lambda maps, **k: float("nan"), "none")
    mil_train = clamp_negatives([s.target for s in train], train)
    teacher = Role("mil", None, mil_train, clamp_negatives(mil_val, val), float("nan"))
    teacher.score = scorer(teacher.val_maps) if val else float("nan")
    log.info("IFKD: MIL pseudo-masks %s = %.4f", score_name, teacher.score)
    mil_score = teacher.score

    net = build_segnet(cfg.net, cfg.widths, cfg.side_weights)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    targets = teacher.train_maps
    best_student: tuple[float, dict[str, torch.Tensor], str] | None = None
    history: list[RoundRecord] = []
    round_states: list[dict[str, torch.Tensor]] = []
    for k in range(1, cfg.rounds + 1):
        work = [copy.copy(s) for s in train]
        for s, t in zip(work, targets, strict=True):
            s.target = t
        loss, n_epochs = _train_round(net, opt, work, cfg, rng, f"IFKD round {k}/{cfg.rounds}")
        s_train = _maps(net, train, cfg.window)
        s_val = _maps(net, val, cfg.window)
        s_score = scorer(s_val) if val else float("nan")
        name = f"student_round{k}"
        state = copy.deepcopy(net.state_dict())
        round_states.append(state)
        if best_student is None or (np.isfinite(s_score) and s_score > best_student[0]):
            best_student = (s_score, state, name)
        swap = should_swap(s_score, teacher.score)
        history.append(RoundRecord(k, teacher.name, teacher.score, s_score, swap, loss, n_epochs))
        log.info("IFKD round %d: teacher %s %s=%.4f, student %.4f%s", k, teacher.name, score_name, teacher.score,
                 s_score, " -> swap" if swap else "")
        if swap:
            old = teacher
            teacher = Role(name, state, clamp_negatives(s_train, train), clamp_negatives(s_val, val), s_score)
            if old.state is not None:
                # the old teacher becomes the student: its weights and a fresh optimiser
                net.load_state_dict(old.state)
                opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            student_maps = old.train_maps
        else:
            student_maps = clamp_negatives(s_train, train)
        targets = clamp_negatives(
            [fuse_maps(t, s, cfg.teacher_weight) for t, s in zip(teacher.train_maps, student_maps, strict=True)], train
        )
    if teacher.state is not None:
        return LoopResult(teacher.state, teacher.name, teacher.score, mil_score, history, round_states)
    assert best_student is not None
    log.warning(
        "IFKD: no student beat the MIL pseudo-masks on validation (%s %.4f); returning the best student (%s, %.4f)",
        score_name, mil_score, best_student[2], best_student[0],
    )
    return LoopResult(best_student[1], best_student[2], best_student[0], mil_score, history, round_states)


def calibrate(
    maps: Sequence[np.ndarray],
    val: Sequence[SlideImage],
    mil_val_maps: Sequence[np.ndarray],
    sigmas: Sequence[float] = (0.0, 1.0, 2.0, 3.0),
) -> tuple[float, float, float]:
    """Choose (Gaussian sigma in working px, threshold) maximising the validation score of ``maps``.

    Returns ``(sigma, threshold, score)``; (0, 0.5, NaN) without validation slides.
    """
    if not val:
        return 0.0, 0.5, float("nan")
    scorer, _ = make_scorer(val, list(mil_val_maps))
    best = (0.0, 0.5, float("-inf"))
    for sg in sigmas:
        sc, t = scorer(maps, sigma=sg, return_threshold=True)
        if sc > best[2]:
            best = (float(sg), float(t), float(sc))
    return best
