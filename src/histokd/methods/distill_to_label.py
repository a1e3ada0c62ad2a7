"""Distill-to-Label (Thiagarajan, Kashyap, Karargyris 2019): a VAT-regularised attention teacher,
distilled into an instance labeller that works on a bag of size 1.

The paper's abstract leaves most choices open; each one we make is a config key, so the ablation can
test the alternatives (``--set key=value``):

Stage 1 -- the teacher (``teacher=abmil``; ``gated-abmil`` and ``dsmil`` also work), trained with the
Fabric engine (:func:`histokd.engine.fit_mil`, checkpoint on validation) and the loss
``CE(Y, F(X)) + vat_alpha · KL(F(X) || F(X + r_adv))`` (:mod:`histokd.methods.vat`): ``r_adv`` found by
``vat_iters`` power iterations with step ``vat_xi``, scaled to norm ``vat_eps`` over the whole bag
(``vat_norm=bag``, default) or per instance (``vat_norm=instance``). ``vat=false`` turns it off.

Stage 2 -- the student, trained to reproduce the (frozen) teacher:

- **what the student is** (``student``): ``mil`` (default) = the teacher's own architecture re-trained
  (initialised from the teacher, ``student_init=teacher``, or from scratch), whose instance prediction is
  its output on the singleton bag {x}; ``head`` (the default before the robustness suite's tuning round) = a
  separate MLP instance classifier on the features, whose output on a bag is the max-tile rule.
- **singleton targets** (``singleton_target``), for instances of positive bags: ``teacher`` = the
  teacher's output on the singleton bag {x}, softened at temperature ``tau``; ``attention`` = the
  bag's teacher probability times the instance's min-max-scaled attention within the bag (WENO-like);
  ``fused`` = the geometric mean of the two views of the teacher, ``sqrt(p_single · a)``, the singleton
  output (after ``singleton_norm``) times the min-max-scaled attention within the bag: a tile gets a high
  target only where the teacher both attends to it and scores it positive on its own;
  ``none`` = positive-bag instances get no singleton target (only sub-bags and full bags teach them).
- **anchoring of the singleton targets** (``singleton_norm``): ``negative`` (default) rescales the
  positive bags' singleton outputs so that the ``singleton_neg_quantile`` (0.95) quantile of the
  teacher's output on the *negative* bags' tiles maps to 0 and the highest output to 1 (clipped at 0):
  a positive-bag tile the teacher scores no higher than negative-bag tiles gets the same target as
  they do, so the student cannot learn which slide a tile came from. ``none`` = the raw softened
  outputs (``negative`` was chosen on two fresh ``hard`` tuning cohorts, ``histokd bench`` 3 x 4-fold CV:
  student tile AUC +0.038 / +0.014, bag AUC +0.030 / +0.015; docs/distill.md).
- **negatives** (``negatives``): instances of negative bags are certain negatives under the MIL
  assumption: ``hard`` one-hot targets (default) or ``teacher`` (their softened singleton output).
- **sub-bags** (``subbag_sizes``, ``subbags_per_bag``): each epoch, ``subbags_per_bag`` random
  sub-bags of each training bag, of a size drawn from ``subbag_sizes``; target = the teacher's
  softened output on the sub-bag (hard negative for sub-bags of negative bags when
  ``negatives=hard``). ``subbag_sizes=[]`` turns them off.
- **full bags** (``full_bags``): the student's bag output on each whole training bag is also fitted to
  the true bag label, which keeps the student's bag score honest.
- **temperature** ``tau`` (default 2) softens the teacher's targets only; the student is trained and
  used at temperature 1, so its probabilities are directly usable.
- **loss** (``loss``): ``kl`` = KL(target || student) (soft cross-entropy up to a constant) or ``mse``
  on probabilities.

The student's checkpoint is chosen on the validation bags (bag AUC of the student's bag output minus
0.1 x its validation cross-entropy, :func:`student_score`, early stopping) in the engine's epoch loop
(:func:`histokd.engine.fit_epochs`), the instance decision threshold on the validation instance labels
where they exist (else 0.5); never on test. ``max_epochs`` (``histokd train --max-epochs``) caps both
stages: the teacher's ``train.max_epochs`` and the student's ``epochs``.

Outputs: ``instance_probs`` = the student, ``instance_scores`` = the teacher's attention logits; the
bag probability is the mean of the student's ``bag_top_k`` (3) top tiles (``bag_score=top``, default), its
max-tile rule (``bag_score=max``) or the teacher's (``bag_score=teacher``). Defaults chosen on the robustness
suite's tuning cohorts (docs/methods.md): the MIL-net student (``student=mil``; ``--set student=head`` is the
instance head) and the student's top-3 tiles as the slide score (round 3; the teacher's output before).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from histokd.config import BaseConfig, validate_config
from histokd.engine import TrainerConfig, fit_mil
from histokd.engine.epochs import fit_epochs, stage_epochs
from histokd.engine.runtime import RuntimeConfig, single_process, torch_threads
from histokd.engine.fabric import seed_everything
from histokd.methods.base import Method, register_method
from histokd.methods.vat import vat_loss
from histokd.evaluate.metrics import bag_auc
from histokd.methods.distill.bags import Bags, pad_bags, prepare_bags
from histokd.methods.distill.labeler import InstanceLabeler, build_modules, fit_decision, val_instance_threshold
from histokd.methods.distill.rules import (
    minmax_pseudo_labels,
    negative_class_index,
    soft_targets,
    teacher_evidence,
)
from histokd.methods.distill.training import student_schedule
from histokd.models.base import MILModel

log = logging.getLogger("histokd")


class D2LConfig(BaseConfig):
    """Distill-to-Label hyper-parameters (each choice is explained in the module docstring)."""

    teacher: Literal["abmil", "gated-abmil", "dsmil"] = "abmil"
    teacher_args: dict[str, Any] = {}
    train: TrainerConfig = TrainerConfig(lr=5e-4, weight_decay=5e-4, max_epochs=50, patience=10)
    standardize: bool = True
    val_fraction: float = 0.2
    # stage 1: VAT
    vat: bool = True
    vat_alpha: float = 1.0
    vat_eps: float = 1.0
    vat_xi: float = 1e-2
    vat_iters: int = 1
    vat_norm: Literal["bag", "instance"] = "bag"
    # stage 2: distillation
    # the student: the teacher's architecture on bags of one ("mil", default since the robustness suite's
    # tuning cohorts, docs/methods.md) or an instance head on the teacher's embedding ("head")
    student: Literal["head", "mil"] = "mil"
    student_init: Literal["teacher", "scratch"] = "teacher"
    student_hidden: list[int] = [256]
    student_dropout: float = 0.0
    singleton_target: Literal["teacher", "attention", "fused", "none"] = "teacher"
    negatives: Literal["hard", "teacher"] = "hard"
    singleton_norm: Literal["none", "negative"] = "negative"  # rescale positive-bag singleton targets
    singleton_neg_quantile: float = 0.95  # ... so that this quantile of negative-bag tiles' output maps to 0
    subbag_sizes: list[int] = [2, 4, 8, 16]
    subbags_per_bag: int = 4
    full_bags: bool = True
    tau: float = 2.0
    loss: Literal["kl", "mse"] = "kl"
    epochs: int = 40
    max_epochs: int | None = None  # caps both stages: train.max_epochs and epochs (histokd train --max-epochs)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    instance_batch: int = 256
    min_student_steps: int = 30
    patience: int = 10
    # the slide output: the mean of the student's bag_top_k top tiles (default, Round 3 of docs/methods.md), its
    # max-tile rule, or the teacher's output (the default of rounds 1-2)
    bag_score: Literal["max", "teacher", "top"] = "top"
    bag_top_k: int = Field(3, ge=1)
    # the tile output: the student's probabilities, or "blend": the softmax of the mean of the student's and the
    # teacher's singleton logits (InstanceLabeler.predict)
    tile_score: Literal["student", "blend"] = "student"
    negative_class: str | None = None
    threads: int | None = 1  # torch threads while fitting (distill.training.torch_threads); None: torch's


class D2LLabeler(InstanceLabeler):
    method = "distill-to-label"


def _bags_to_dataset(b: Bags) -> Any:
    from histokd.data.bags import BagDataset

    return BagDataset.from_arrays([x.numpy() for x in b.features], list(b.labels), classes=b.classes,
                                  instance_labels=b.instance_labels)


def distill_loss(student_probs: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over rows of KL(target || student) or squared error; both [M, C] probabilities."""
    if kind == "mse":
        return ((student_probs - target) ** 2).sum(-1).mean()
    p = student_probs.clamp_min(1e-7)
    t = target.clamp_min(1e-12)
    return (target * (t.log() - p.log())).sum(-1).mean()


def max_rule_batched(probs: torch.Tensor, mask: torch.Tensor, neg: int) -> torch.Tensor:
    """The max-tile bag rule for padded bags: ``probs`` [B, K, C], ``mask`` [B, K] -> [B, C]."""
    p = probs.masked_fill(~mask.unsqueeze(-1), 0.0).amax(1)
    C = p.shape[1]
    others = [c for c in range(C) if c != neg]
    neg_p = 1 - p[:, others].amax(-1)
    p = torch.cat([p[:, :neg], neg_p.unsqueeze(1), p[:, neg + 1 :]], 1).clamp_min(0)
    return p / p.sum(-1, keepdim=True).clamp_min(1e-12)


@register_method("distill-to-label")
class DistillToLabel(Method):
    """Distill-to-Label: VAT-regularised attention teacher, then a student distilled on singletons and
    sub-bags (see the module docstring for every choice and its config key)."""

    name = "distill-to-label"
    config_cls = D2LConfig
    labeler_cls = D2LLabeler

    @classmethod
    def check_config(cls, config: Any) -> None:
        student_precision(config)

    def fit(self, train: Any, val: Any, config: Any = None) -> D2LLabeler:
        cfg = config if isinstance(config, D2LConfig) else validate_config(D2LConfig, config, "distill-to-label")
        student_precision(cfg)  # refused before the teacher trains
        with torch_threads(cfg.threads):
            return self._fit(train, val, cfg)

    def _fit(self, train: Any, val: Any, cfg: D2LConfig) -> D2LLabeler:
        tr, va, mean, std = prepare_bags(train, val, cfg.standardize, cfg.val_fraction, self.seed)
        neg = negative_class_index(tr.classes, cfg.negative_class)
        meta: dict[str, Any] = {
            "method": self.name, "in_dim": tr.dim, "n_classes": len(tr.classes), "classes": list(tr.classes),
            "negative_class": neg, "encoder": None, "teacher": cfg.teacher, "teacher_args": dict(cfg.teacher_args),
            "student": {"kind": cfg.student, "hidden": list(cfg.student_hidden), "dropout": cfg.student_dropout},
            "bag_score": cfg.bag_score, "bag_top_k": cfg.bag_top_k, "tile_score": cfg.tile_score, "config": cfg.model_dump(mode="json"),
        }
        seed_everything(self.seed)
        mods = build_modules(meta)
        teacher: MILModel = mods["teacher"]  # type: ignore[assignment]
        t0 = time.time()
        tcfg = cfg.train.model_copy(update={"max_epochs": stage_epochs(cfg.train.max_epochs, cfg.max_epochs)})
        res = fit_mil(teacher, _bags_to_dataset(tr), _bags_to_dataset(va), tcfg, seed=self.seed,
                      log_path=self.log_path, extra_loss=self._vat_hook(cfg) if cfg.vat else None,
                      stage="distill-to-label teacher")
        teacher = res.model.eval()
        mods["teacher"] = teacher
        log.info("distill-to-label: teacher trained in %.1f s (best epoch %d)", time.time() - t0, res.best_epoch)
        if cfg.student == "mil" and cfg.student_init == "teacher":
            mods["student"].load_state_dict(teacher.state_dict())
        labeler = D2LLabeler(mods, meta)
        history = _distill(labeler, tr, va, cfg, self.seed)
        labeler.meta["instance_threshold"] = val_instance_threshold(labeler, va)
        labeler.meta["decision"] = fit_decision(labeler, tr, va)
        labeler.meta["history"] = history
        labeler.meta["teacher_history"] = res.history
        labeler.mean, labeler.std = mean, std
        return labeler

    def _vat_hook(self, cfg: D2LConfig) -> Any:
        gen = torch.Generator().manual_seed(self.seed + 1)

        def hook(model: MILModel, out: Any, batch: Any) -> torch.Tensor:
            loss = vat_loss(lambda x, m: model(x, m).bag_logits, batch.x, batch.mask, out.bag_logits,
                            xi=cfg.vat_xi, eps=cfg.vat_eps, n_power=cfg.vat_iters, norm=cfg.vat_norm,
                            generator=gen)
            return cfg.vat_alpha * loss

        return hook


@torch.no_grad()
def singleton_targets(teacher: MILModel, tr: Bags, cfg: D2LConfig, neg: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets [M, C] for every training instance and a weight [M] (0 = no target), bags in order."""
    C = len(tr.classes)
    singles = [torch.softmax(teacher.instance_logits(x.unsqueeze(0))[0] / cfg.tau, -1) for x in tr.features]
    views = singles  # the teacher's singleton view of each bag, anchored on the negative bags if asked
    if cfg.singleton_norm == "negative" and cfg.singleton_target in ("teacher", "fused"):
        views = _anchor_on_negatives(singles, singles, tr, cfg, neg)
    ts, ws = [], []
    for x, y, single, t in zip(tr.features, tr.labels, singles, views):
        y, n = int(y), len(x)
        w = torch.ones(n)
        if y == neg:
            t = F.one_hot(torch.full((n,), neg), C).float() if cfg.negatives == "hard" else single
        elif cfg.singleton_target == "none":
            t, w = torch.zeros(n, C), torch.zeros(n)
        elif cfg.singleton_target in ("attention", "fused"):
            out = teacher(x.unsqueeze(0))
            s = teacher_evidence(out.instance_scores, y)[0]
            a = (s - s.min()) / (s.max() - s.min()).clamp_min(1e-12)
            if cfg.singleton_target == "attention":
                v = torch.softmax(out.bag_logits[0] / cfg.tau, -1)[y] * a
            else:
                v = (t[:, y] * a).clamp_min(0).sqrt()
            t = soft_targets(v, y, neg, C)
        ts.append(t)
        ws.append(w)
    return torch.cat(ts), torch.cat(ws)


def _anchor_on_negatives(ts: list[torch.Tensor], singles: list[torch.Tensor], tr: Bags, cfg: D2LConfig,
                         neg: int) -> list[torch.Tensor]:
    """Rescale the positive bags' singleton targets of class c with WENO's negative-anchored min-max
    (:func:`~histokd.methods.distill.rules.minmax_pseudo_labels`, ``norm="negative"``, no clamp margin):
    0 at the ``singleton_neg_quantile`` of the teacher's class-c output on the *negative* bags' tiles (its
    own output there, whatever ``negatives`` says), 1 at the highest. A tile the teacher scores like
    negative-bag tiles then gets the same target 0. No negative bag: unchanged."""
    C = len(tr.classes)
    if not any(int(y) == neg for y in tr.labels):
        return ts
    out = list(ts)
    for c in {int(y) for y in tr.labels if int(y) != neg}:
        idx = [i for i, y in enumerate(tr.labels) if int(y) in (c, neg)]
        ys = minmax_pseudo_labels([singles[i][:, c] for i in idx], [int(tr.labels[i]) == c for i in idx],
                                  "negative", clamp=0.0, neg_quantile=cfg.singleton_neg_quantile)
        for i, y in zip(idx, ys):
            if int(tr.labels[i]) == c:
                out[i] = soft_targets(y, c, neg, C)
    return out


@torch.no_grad()
def sample_subbags(teacher: MILModel, tr: Bags, cfg: D2LConfig, neg: int,
                   rng: np.random.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``subbags_per_bag`` random sub-bags of each training bag -> (features [k, D], target [C])."""
    C = len(tr.classes)
    out = []
    if not cfg.subbag_sizes:
        return out
    for x, y in zip(tr.features, tr.labels):
        for _ in range(cfg.subbags_per_bag):
            k = int(min(rng.choice(cfg.subbag_sizes), len(x)))
            sub = x[torch.as_tensor(rng.choice(len(x), k, replace=False))]
            if int(y) == neg and cfg.negatives == "hard":
                t = F.one_hot(torch.tensor(neg), C).float()
            else:
                t = torch.softmax(teacher(sub.unsqueeze(0)).bag_logits[0] / cfg.tau, -1)
            out.append((sub, t))
    return out


def _student_bag_probs(labeler: InstanceLabeler, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The student's bag output for padded bags ``x`` [B, K, D] -> [B, C] (max rule or the MIL net)."""
    st = labeler.modules["student"]
    if labeler.meta["student"]["kind"] == "mil":
        return torch.softmax(st(x, mask).bag_logits, -1)
    B, K, D = x.shape
    probs = torch.softmax(labeler.student_logits(x.reshape(B * K, D)), -1).reshape(B, K, -1)
    return max_rule_batched(probs, mask, labeler.neg)


def student_precision(cfg: D2LConfig) -> str:
    """The student's precision: the teacher's ``train.precision`` in the student's one CPU process
    (:func:`histokd.engine.runtime.single_process`); the teacher's devices reach the teacher alone."""
    return single_process(RuntimeConfig(precision=cfg.train.precision), "distill-to-label student")


def _distill(labeler: InstanceLabeler, tr: Bags, va: Bags, cfg: D2LConfig, seed: int) -> list[dict[str, float]]:
    """Stage 2 through the engine's epoch loop (:func:`histokd.engine.fit_epochs`): each epoch is one
    :class:`_StudentEpoch`; the checkpoint is the epoch with the best :func:`student_score` on validation,
    with early stopping after ``patience`` epochs."""
    seed_everything(seed)
    ep = _StudentEpoch(labeler, tr, cfg, seed)
    res = fit_epochs({"student": labeler.modules["student"]}, ep, stage_epochs(cfg.epochs, cfg.max_epochs),
                     validate=lambda e: _validate_student(labeler, va), score=student_score, patience=cfg.patience,
                     stage="distill-to-label student", precision=student_precision(cfg))
    return res.history


def student_score(v: dict[str, float]) -> tuple[float, float]:
    """Checkpoint score on validation: the student's bag AUC minus 0.1 x its validation cross-entropy,
    ties broken by the loss alone."""
    auc = 0.0 if math.isnan(v["student_bag_auc"]) else v["student_bag_auc"]
    return (round(auc - 0.1 * v["student_val_loss"], 4), -v["student_val_loss"])


class _StudentEpoch:
    """One distillation epoch (the engine's ``train_epoch`` hook): singleton targets, sub-bags and full
    bags, spread over the student's minibatches."""

    def __init__(self, labeler: InstanceLabeler, tr: Bags, cfg: D2LConfig, seed: int) -> None:
        self.labeler, self.tr, self.cfg = labeler, tr, cfg
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.teacher: MILModel = labeler.modules["teacher"]  # type: ignore[assignment]
        self.student = labeler.modules["student"]
        self.neg, self.C = labeler.neg, len(tr.classes)
        self.all_x = torch.cat(tr.features)
        self.targets, weights = singleton_targets(self.teacher, tr, cfg, self.neg)
        self.use = torch.nonzero(weights > 0).flatten()
        self.opt = torch.optim.Adam(self.student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def __call__(self, epoch: int) -> dict[str, float]:
        cfg, tr, rng, labeler = self.cfg, self.tr, self.rng, self.labeler
        self.student.train()
        subs = sample_subbags(self.teacher, tr, cfg, self.neg, rng)
        sub_order = rng.permutation(len(subs)) if subs else np.array([], int)
        full_order = rng.permutation(len(tr)) if cfg.full_bags else np.array([], int)
        steps = student_schedule(len(self.use), cfg.instance_batch, cfg.min_student_steps, self.gen)
        n = len(steps)
        total = 0.0
        for k, j in enumerate(steps):
            loss = torch.zeros(())
            idx = self.use[j]
            if len(idx):
                p = torch.softmax(_singleton_logits(labeler, self.all_x[idx]), -1)
                loss = loss + distill_loss(p, self.targets[idx], cfg.loss)
            chunk = sub_order[k * len(sub_order) // n : (k + 1) * len(sub_order) // n]
            if len(chunk):
                xb, mb = pad_bags([subs[i][0] for i in chunk])
                tb = torch.stack([subs[i][1] for i in chunk])
                loss = loss + distill_loss(_student_bag_probs(labeler, xb, mb), tb, cfg.loss)
            chunk = full_order[k * len(full_order) // n : (k + 1) * len(full_order) // n]
            if len(chunk):
                xb, mb = pad_bags([tr.features[i] for i in chunk])
                tb = F.one_hot(torch.as_tensor(tr.labels[chunk]), self.C).float()
                loss = loss + distill_loss(_student_bag_probs(labeler, xb, mb), tb, cfg.loss)
            if loss.requires_grad:
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
            total += loss.item()
        return {"train_loss": total / max(n, 1)}


def _singleton_logits(labeler: InstanceLabeler, x: torch.Tensor) -> torch.Tensor:
    """Student logits [M, C] for instances ``x`` [M, D], each seen alone (with gradients)."""
    st = labeler.modules["student"]
    if labeler.meta["student"]["kind"] == "mil":
        return st(x.unsqueeze(1)).bag_logits
    return labeler.student_logits(x)


@torch.no_grad()
def _validate_student(labeler: InstanceLabeler, va: Bags) -> dict[str, float]:
    labeler.modules.eval()
    probs, losses = [], []
    for x, y in zip(va.features, va.labels):
        p = _student_bag_probs(labeler, x.unsqueeze(0), torch.ones(1, len(x), dtype=torch.bool))[0]
        probs.append(p.numpy())
        losses.append(-math.log(max(float(p[int(y)]), 1e-7)))
    return {"student_bag_auc": bag_auc(np.stack(probs), va.labels, labeler.neg),
            "student_val_loss": float(np.mean(losses))}
