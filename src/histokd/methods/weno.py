"""WENO (Qu et al., NeurIPS 2022): a teacher and an instance student over one shared encoder.

What we implement (``histokd train --method weno``):

- **Shared encoder** ``f``: :class:`~histokd.models.student.ProjectionEncoder` (Linear + BatchNorm
  (+ ReLU)) on frozen tile features, trained by both teacher and student (``shared_encoder=false``
  gives teacher and student an encoder each: the "without shared encoder" ablation). End-to-end mode
  (``encoder=cnn``) puts a small CNN (:class:`~histokd.models.tile_cnn.TileCNN`) on tile pixels
  instead, read from the workspace's slides (:mod:`histokd.data.tile_images`) and trained jointly;
  :class:`WenoPixelLabeler` labels slides from pixels (``predict_slide``, the ``histokd label`` hook).
- **Teacher**: ABMIL (``teacher=abmil``, also ``gated-abmil``) or DSMIL (``teacher=dsmil``) from
  :mod:`histokd.models`, on ``f(x)``; loss = the model's own bag loss.
- **Student**: :class:`~histokd.models.student.InstanceHead` on ``f(x)``; it labels a tile on its own.
- **Pseudo-labels** (:func:`~histokd.methods.distill.rules.minmax_pseudo_labels`): the teacher's instance
  evidence ``s`` (``pseudo_source``: by default its output on each tile as a bag of one, the log-odds of the
  bag's class; the authors' ``attention``: the pre-softmax attention logit for ABMIL, the bag class's
  instance-classifier logit for DSMIL), min-max scaled and
  clamped to ``[1e-5, 1 - 1e-5]`` in positive bags, 0 in negative bags. ``pseudo_norm=negative``
  (default) takes max over every training instance of the last teacher pass and min = the
  ``pseudo_neg_quantile`` (0.95) quantile of the negative bags' evidence, so a tile the teacher scores
  like negative-bag tiles gets target 0 in a positive bag too; ``pseudo_norm=global`` (the authors'
  code) takes min and max over every training instance, ``pseudo_norm=bag`` per bag. Targets are
  computed once per epoch, after the teacher step, with the teacher and encoder in eval mode (the
  authors recompute them per minibatch with dropout on; ours are deterministic).
- **Student loss** (:func:`~histokd.methods.distill.rules.weighted_soft_ce`): class-weighted soft
  cross-entropy. ``class_weights=
  authors`` is the authors' 0.1 (negative) / 0.9 (positive); ``balanced`` weights each class by the
  inverse of its total target mass in the epoch; ``none`` is plain soft CE.
- **Alternation**: each epoch = one teacher pass over the training bags, then one student pass over
  every training instance (shuffled, ``instance_batch`` per step; repeated passes until at least
  ``min_student_steps`` steps, so that small cohorts train the student as often as the teacher); both
  passes update ``f``.
- **Hard positive mining** (:func:`~histokd.methods.distill.rules.hard_positive_keep`): from epoch
  ``hpm_warmup`` on, in every positive
  training bag the instances with student probability ``> hpm_threshold`` are dropped before the
  teacher sees the bag (the argmax is kept when nothing remains): hard pseudo-bags. With ``calibrate``
  the threshold applies to the calibrated probabilities (as at prediction).
- **Validation, never test**: the checkpoint is the epoch with the best validation score (mean of the
  teacher's bag AUC and the student's max-tile bag AUC, minus 0.1 x the teacher's validation
  cross-entropy, :func:`selection_score`), with early
  stopping (``patience``), both the engine's (:func:`histokd.engine.fit_epochs`); ``max_epochs``
  (``histokd train --max-epochs``) caps ``epochs``. ``hpm_threshold_grid`` trains once per threshold and keeps the best on
  validation. The instance decision threshold is the validation F1-optimal one where the validation
  bags carry instance labels, else 0.5.
- **Outputs**: ``instance_probs`` = the student's probabilities, ``instance_scores`` = the teacher's
  evidence ``s``; bag probabilities = the mean of the student's ``bag_top_k`` top tiles (``bag_score=top``,
  default), its max-tile rule (``bag_score=max``, the paper's) or the teacher's output (``bag_score=teacher``).
- **Defaults that differ from the paper**, chosen on the robustness suite's tuning cohorts only
  (docs/methods.md): pseudo-labels from the teacher on each tile as a bag of one
  (``pseudo_source=singleton``; the paper's attention: ``--set pseudo_source=attention``) and the student's
  top-3 tiles as the slide score (``bag_score=top``; the paper's: ``--set bag_score=max``).
- **Calibration** (``calibrate``): the class-weighted loss biases the student's probabilities
  (:func:`student_logit_offset`); the bias is removed from its logits at prediction.

Deviations from the paper, for a CPU: Adam (lr 1e-3) instead of SGD over 1,500 epochs; a 256-wide
student instead of 2×4096; one torch thread while fitting (``threads``, see
:func:`~histokd.methods.distill.training.torch_threads`).

Multi-class labels: one class is the *negative* class (the class that is not ``tumour`` for two
classes, else ``negative_class`` or the first class); an instance of a bag of class ``c`` gets the soft
target ``y·e_c + (1-y)·e_neg``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from histokd.config import BaseConfig, read_yaml, validate_config
from histokd.engine.epochs import fit_epochs, stage_epochs
from histokd.engine.runtime import RuntimeConfig, single_process, torch_threads
from histokd.engine.fabric import seed_everything
from histokd.errors import InputError
from histokd.evaluate.metrics import bag_auc
from histokd.methods.base import Method, Prediction, register_method
from histokd.methods.distill.bags import Bags, pad_bags, prepare_bags
from histokd.methods.distill.labeler import InstanceLabeler, build_modules, fit_decision, val_instance_threshold
from histokd.methods.distill.rules import (
    hard_positive_keep,
    max_bag_probs,
    minmax_pseudo_labels,
    negative_class_index,
    soft_targets,
    teacher_evidence,
    weighted_soft_ce,
)
from histokd.methods.distill.training import (
    bn_eval,
    mods_train,
    refresh_batchnorm,
    student_schedule,
)
from histokd.models.base import MILModel

log = logging.getLogger("histokd")


class WenoConfig(BaseConfig):
    """WENO hyper-parameters (see the module docstring for each choice)."""

    teacher: Literal["abmil", "gated-abmil", "dsmil"] = "abmil"
    teacher_args: dict[str, Any] = {}
    encoder: Literal["projection", "cnn"] = "projection"
    end_to_end: bool = False  # same as encoder=cnn
    shared_encoder: bool = True
    encoder_dim: int = 256
    encoder_relu: bool = True
    student_hidden: list[int] = [256]
    student_dropout: float = 0.0
    epochs: int = 60
    max_epochs: int | None = None  # caps ``epochs`` (histokd train --max-epochs)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    bag_batch: int = 1
    instance_batch: int = 512
    min_student_steps: int = 50  # per epoch; extra shuffled passes when the cohort is small
    max_bag_size: int | None = None  # random subset of a larger bag per teacher step (prediction uses all)
    class_weights: Literal["authors", "balanced", "none"] = "authors"
    neg_weight: float = 0.1  # authors' weights: neg_weight / (1 - neg_weight)
    pseudo_norm: Literal["global", "bag", "negative"] = "negative"
    # what the pseudo-labels are made of: the teacher's attention logits (the authors'), its own instance
    # classifier on each tile as a bag of one ("singleton": log-odds of the bag's class against the negative
    # class), or the mean of both after each is scaled to [0, 1] ("fused"). Default singleton, chosen on the
    # robustness suite's tuning cohorts (docs/methods.md, "Robustness suite"); attention is the paper's recipe
    pseudo_source: Literal["attention", "singleton", "fused"] = "singleton"
    pseudo_neg_quantile: float = 0.95  # pseudo_norm=negative: negative-bag evidence quantile mapped to 0
    hpm: bool = True
    hpm_warmup: int = 10
    hpm_threshold: float = 0.5
    hpm_threshold_grid: list[float] = []
    # the slide output: the mean of the student's bag_top_k top tiles (default, Round 3 of docs/methods.md), its
    # max-tile rule (the paper's) or the teacher's output (the default of rounds 1-2)
    bag_score: Literal["max", "teacher", "top"] = "top"
    bag_top_k: int = Field(3, ge=1)
    # tiles: the student's probabilities (the paper's) or "blend" with the teacher's (InstanceLabeler.predict)
    tile_score: Literal["student", "blend"] = "student"
    calibrate: bool = True  # undo the class weights' bias in the student's logits at prediction
    negative_class: str | None = None
    patience: int = 20
    standardize: bool = True  # z-score features with training statistics (stored with the model)
    val_fraction: float = 0.2  # held out of train (stratified) when no validation split is given
    threads: int | None = 1  # torch threads while fitting (see torch_threads); None = torch's default
    runtime: RuntimeConfig = RuntimeConfig()  # --precision (one CPU process: engine.runtime.single_process)
    # end-to-end (pixels) options, used when encoder=cnn
    cnn_arch: str = "tiny"
    tile_px: int = 64
    tile_mpp: float | None = None


class WenoLabeler(InstanceLabeler):
    method = "weno"

    @classmethod
    def class_for(cls, meta: dict[str, Any]) -> type[InstanceLabeler]:
        return WenoPixelLabeler if (meta.get("encoder") or {}).get("kind") == "cnn" else WenoLabeler


class WenoPixelLabeler(WenoLabeler):
    """End-to-end WENO: the shared encoder is a :class:`~histokd.models.tile_cnn.TileCNN` on tile pixels.

    ``predict(images)`` takes one slide's tiles as uint8 ``[N, 3, H, W]`` (or ``[N, H, W, 3]``), not
    features; ``histokd label`` calls :meth:`predict_slide`, which reads the tiles from the slide
    (:meth:`histokd.data.slide_source.SlideSource.read_tiles`, ``tile_px`` px covering each tile).
    """

    def _input(self, features: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(features))
        if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
            raise InputError(f"end-to-end WENO labels tile images [N, 3, H, W]; got shape {tuple(x.shape)} "
                             "(features cannot be used: this model was trained on pixels)")
        return x if x.shape[1] == 3 else x.permute(0, 3, 1, 2).contiguous()

    teacher_singleton_probs = None  # type: ignore[assignment]  # not a SingletonTeacher: it reads pixels

    def predict(self, features: np.ndarray, chunk: int = 512, *, bag_score: str | None = None,
                tile_score: str | None = None) -> Prediction:
        return super().predict(features, chunk, bag_score=bag_score, tile_score=tile_score)

    def predict_slide(self, slide: Any, features: np.ndarray | None, coords: np.ndarray,
                      patch_size_level0: float | None = None) -> Prediction:
        """Label one slide from its pixels: ``slide`` a :class:`~histokd.data.slide_source.SlideSource` (or a
        cohort row with ``path``); ``coords`` [N, 2] level-0 tile top-lefts; ``patch_size_level0`` their side
        (from the feature file). ``features`` are ignored."""
        from histokd.data.slide_source import SlideSource

        src = SlideSource.of(slide)
        if patch_size_level0 is None:
            raise InputError(f"{src.path}: the feature file has no patch_size_level0; re-run `histokd embed`")
        img = src.read_tiles(coords, float(patch_size_level0), int(self.meta["tile_px"]), self.meta.get("tile_mpp"))
        return self.predict(img.transpose(0, 3, 1, 2))

    def predict_bag(self, ds: Any, i: int) -> Prediction:
        """Label bag ``i`` of a workspace ``BagDataset`` from its slide's pixels (tiles are cached)."""
        from histokd.data.tile_images import dataset_tile_images

        images, kept, _ = dataset_tile_images(ds.subset([i]), int(self.meta["tile_px"]), self.meta.get("tile_mpp"))
        return self.predict(images[0])


_E2E_DEFAULTS: dict[str, Any] = {
    "encoder_dim": 128, "student_hidden": [128], "teacher_args": {"hidden": [128], "attn_dim": 64},
    "hpm_warmup": 5, "instance_batch": 128, "min_student_steps": 0,
    "max_bag_size": 256, "standardize": False,
}
"""End-to-end defaults, applied to every key the user did not set: a CNN step costs ~3 ms per 64 px
tile on one CPU core, so the student makes one pass over the tiles per epoch and the teacher sees at
most 256 random tiles of a slide per step (prediction uses all). Epochs and patience are WENO's own
(60 / 20): with 25 / 8 the validation score of a 48-slide cohort stopped training at an early epoch (0.58
against 0.79; docs/distill.md)."""


def e2e_config(cfg: WenoConfig) -> WenoConfig:
    """``cfg`` with the end-to-end defaults for the keys not set explicitly; ``standardize`` is off
    (the CNN scales pixels itself)."""
    upd = {k: v for k, v in _E2E_DEFAULTS.items() if k not in cfg.model_fields_set}
    upd["standardize"] = False
    upd["encoder"] = "cnn"
    return cfg.model_copy(update=upd)


def pixel_bags(ds: Any, cfg: WenoConfig, what: str) -> Bags:
    """A workspace ``BagDataset`` -> :class:`Bags` whose "features" are uint8 tile images [N, 3, px, px]."""
    from histokd.data.tile_images import dataset_tile_images

    images, kept, _ = dataset_tile_images(ds, cfg.tile_px, cfg.tile_mpp, what=what)
    inst = [ds[i].instance_labels for i in kept]
    has = all(il is not None for il in inst)
    return Bags([torch.from_numpy(im) for im in images], np.asarray(ds.labels)[kept],
                [np.asarray(il, np.int64) for il in inst] if has else None, list(ds.classes),
                [ds.records[i].slide_id for i in kept])


@dataclass
class _Fitted:
    modules: dict[str, nn.Module]
    score: tuple[float, float]
    history: list[dict[str, float]]
    class_weights: torch.Tensor | None = None  # the student loss's class weights at the chosen epoch


def student_logit_offset(weights: torch.Tensor, neg: int) -> list[float]:
    """Logit offsets [C] that undo class weights ``w`` [C] in a soft cross-entropy.

    With ``-Σ_c w_c t_c log p_c`` the optimum is ``p_c ∝ w_c t_c``, i.e. logits shifted by ``log w_c``;
    subtracting ``log(w_c / w_neg)`` gives back ``p = t`` (calibrated probabilities). Ranking (AUC) is
    unchanged for two classes; bag accuracy at 0.5 and the meaning of the instance threshold improve.
    """
    lw = torch.log(weights.clamp_min(1e-12))
    return (lw - lw[int(neg)]).tolist()


def _class_weights(cfg: WenoConfig, targets: torch.Tensor, neg: int) -> torch.Tensor | None:
    C = targets.shape[1]
    if cfg.class_weights == "none":
        return None
    if cfg.class_weights == "authors":
        w = torch.full((C,), 1 - cfg.neg_weight)
        w[neg] = cfg.neg_weight
        return w
    mass = targets.sum(0).clamp_min(1e-6)
    w = 1.0 / mass
    return w / w.sum()


@register_method("weno")
class Weno(Method):
    """WENO: teacher + instance student over a shared encoder, with hard positive mining.

    See the module docstring for every choice; ``fit(train, val, config)`` returns a :class:`WenoLabeler`.
    """

    name = "weno"
    config_cls = WenoConfig
    labeler_cls = WenoLabeler

    @classmethod
    def check_config(cls, config: Any) -> None:
        single_process(config.runtime, "weno")

    def fit(self, train: Any, val: Any, config: Any = None) -> WenoLabeler:
        cfg = config if isinstance(config, WenoConfig) else validate_config(WenoConfig, config, "weno config")
        self.check_config(cfg)  # refused before any tile is read
        with torch_threads(cfg.threads):
            if cfg.end_to_end or cfg.encoder == "cnn":
                cfg = e2e_config(cfg)
                train, val = pixel_bags(train, cfg, "weno: train tiles"), (
                    None if val is None or len(val) == 0 else pixel_bags(val, cfg, "weno: val tiles"))
            return self._fit(train, val, cfg)

    def _fit(self, train: Any, val: Any, cfg: WenoConfig) -> WenoLabeler:
        tr, va, mean, std = prepare_bags(train, val, cfg.standardize, cfg.val_fraction, self.seed)
        grid = cfg.hpm_threshold_grid if (cfg.hpm and cfg.hpm_threshold_grid) else [cfg.hpm_threshold]
        best: _Fitted | None = None
        best_thr = grid[0]
        for thr in grid:
            fitted = _fit_weno(tr, va, cfg.model_copy(update={"hpm_threshold": thr}), self.seed)
            log.info("weno: hpm_threshold=%.2f -> validation score %s", thr, fitted.score)
            if best is None or fitted.score > best.score:
                best, best_thr = fitted, thr
        assert best is not None
        meta = _meta(cfg, tr, best_thr)
        if cfg.calibrate and best.class_weights is not None:
            meta["student_logit_offset"] = student_logit_offset(best.class_weights, meta["negative_class"])
        labeler = WenoLabeler.class_for(meta)(best.modules, meta)
        labeler.meta["instance_threshold"] = val_instance_threshold(labeler, va)
        labeler.meta["decision"] = fit_decision(labeler, tr, va)
        labeler.mean, labeler.std = mean, std
        labeler.meta["history"] = best.history
        return labeler


def _meta(cfg: WenoConfig, tr: Bags, thr: float) -> dict[str, Any]:
    pixels = cfg.end_to_end or cfg.encoder == "cnn"
    enc: dict[str, Any] = {"out_dim": cfg.encoder_dim, "batch_norm": True, "relu": cfg.encoder_relu}
    extra: dict[str, Any] = {}
    if pixels:
        enc = {"kind": "cnn", "out_dim": cfg.encoder_dim, "arch": cfg.cnn_arch}
        extra = {"tile_px": cfg.tile_px, "tile_mpp": cfg.tile_mpp}
    return {
        **extra,
        "method": "weno",
        "in_dim": int(tr.features[0].shape[1]),
        "n_classes": len(tr.classes),
        "classes": list(tr.classes),
        "negative_class": negative_class_index(tr.classes, cfg.negative_class),
        "encoder": enc,
        "student_encoder": None if cfg.shared_encoder else enc,
        "teacher": cfg.teacher,
        "teacher_args": dict(cfg.teacher_args),
        "student": {"kind": "head", "hidden": list(cfg.student_hidden), "dropout": cfg.student_dropout},
        "bag_score": cfg.bag_score, "bag_top_k": cfg.bag_top_k,
        "tile_score": cfg.tile_score,
        "hpm_threshold": thr,
        "config": cfg.model_dump(mode="json"),
    }


def _fit_weno(tr: Bags, va: Bags, cfg: WenoConfig, seed: int) -> _Fitted:
    """One WENO run through the engine's epoch loop (:func:`histokd.engine.fit_epochs`): each epoch is a
    teacher pass, new pseudo-labels and a student pass (:class:`_WenoEpoch`); the checkpoint is the epoch
    with the best :func:`selection_score` on validation, with early stopping after ``patience`` epochs."""
    seed_everything(seed)
    meta = _meta(cfg, tr, cfg.hpm_threshold)
    mods = build_modules(meta)
    labeler = WenoLabeler.class_for(meta)(mods, meta)
    ep = _WenoEpoch(tr, cfg, mods, meta, seed)
    best_w: list[torch.Tensor | None] = [None]

    def keep_weights(epoch: int) -> None:
        best_w[0] = None if ep.w is None else ep.w.clone()

    res = fit_epochs(mods, ep, stage_epochs(cfg.epochs, cfg.max_epochs), validate=lambda e: _validate(labeler, va),
                     score=selection_score, patience=cfg.patience, stage="weno", on_best=keep_weights,
                     precision=single_process(cfg.runtime, "weno"))
    return _Fitted(mods, res.best_score, res.history, best_w[0])


class _WenoEpoch:
    """One WENO training epoch (the engine's ``train_epoch`` hook): teacher pass with hard positive
    mining after the warm-up, pseudo-labels from the teacher, student pass over every instance."""

    def __init__(self, tr: Bags, cfg: WenoConfig, mods: dict[str, nn.Module], meta: dict[str, Any], seed: int) -> None:
        self.tr, self.cfg, self.mods = tr, cfg, mods
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.neg, self.C = int(meta["negative_class"]), int(meta["n_classes"])
        self.enc_t: nn.Module = mods["encoder"]
        self.enc_s: nn.Module = mods.get("student_encoder", self.enc_t)
        self.teacher: MILModel = mods["teacher"]  # type: ignore[assignment]
        self.student: nn.Module = mods["student"]
        params_t = list(self.enc_t.parameters()) + list(self.teacher.parameters())
        params_s = list(self.student.parameters()) + ([] if cfg.shared_encoder else list(self.enc_s.parameters()))
        if cfg.shared_encoder:
            params_s += list(self.enc_t.parameters())
        # separate optimisers, as in the authors' code: each step moves its own head and the shared encoder
        self.opt_t = torch.optim.Adam(params_t, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.opt_s = torch.optim.Adam(list(dict.fromkeys(params_s)), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.all_x = torch.cat(tr.features)
        self.w: torch.Tensor | None = None  # the student loss's class weights of the last epoch

    def __call__(self, epoch: int) -> dict[str, float]:
        t_loss = self._teacher_pass(epoch)
        # ---- pseudo-labels from the teacher (eval mode, full bags) ----
        targets = _pseudo_targets(self.tr, self.enc_t, self.teacher, self.cfg.pseudo_norm, self.neg, self.C,
                                  self.cfg.pseudo_neg_quantile, self.cfg.pseudo_source)
        self.w = _class_weights(self.cfg, targets, self.neg)
        s_loss, n_inst = self._student_pass(targets)
        return {"teacher_loss": t_loss / len(self.tr), "student_loss": s_loss / max(1, n_inst)}

    def _teacher_pass(self, epoch: int) -> float:
        cfg, tr = self.cfg, self.tr
        # BatchNorm statistics of one bag are biased by its own content (a bag of 10 tiles with 3
        # tumour tiles normalises the tumour away), so the teacher pass uses population statistics,
        # refreshed from random training instances, and never per-bag batch statistics.
        for e in {id(self.enc_t): self.enc_t, id(self.enc_s): self.enc_s}.values():
            refresh_batchnorm(e, self.all_x, self.gen)
        mods_train(self.mods)
        bn_eval(self.enc_t)
        mine = cfg.hpm and epoch >= cfg.hpm_warmup
        # the threshold applies to calibrated probabilities, as at prediction: with the authors' 0.1/0.9
        # weights a raw probability of 0.5 means a target of only 0.1, and mining would empty the bags
        calibrated = mine and cfg.calibrate and self.w is not None
        mine_offset = torch.as_tensor(student_logit_offset(self.w, self.neg)) if calibrated else None
        order = self.rng.permutation(len(tr))
        t_loss = 0.0
        for s in range(0, len(order), cfg.bag_batch):
            idx = order[s : s + cfg.bag_batch]
            bags = []
            for i in idx:
                x = tr.features[i]
                if cfg.max_bag_size and len(x) > cfg.max_bag_size:
                    x = x[torch.randperm(len(x), generator=self.gen)[: cfg.max_bag_size]]
                if mine and int(tr.labels[i]) != self.neg:
                    p = _student_probs(self.enc_s, self.student, x, mine_offset)[:, int(tr.labels[i])]
                    x = x[hard_positive_keep(p, cfg.hpm_threshold)]
                bags.append(x)
            xb, mb = pad_bags(bags)
            y = torch.as_tensor(tr.labels[idx])
            out = self.teacher(self.enc_t(xb, mb), mb)
            loss = self.teacher.bag_loss(out, y)
            extra = self.teacher.loss_extra(out, y)
            if extra is not None:
                loss = loss + extra
            self.opt_t.zero_grad()
            loss.backward()
            self.opt_t.step()
            t_loss += loss.item() * len(idx)
        return t_loss

    def _student_pass(self, targets: torch.Tensor) -> tuple[float, int]:
        mods_train(self.mods)
        perm = student_schedule(len(self.all_x), self.cfg.instance_batch, self.cfg.min_student_steps, self.gen)
        s_loss = 0.0
        for j in perm:
            if len(j) < 2:
                continue  # BatchNorm needs two instances
            loss = weighted_soft_ce(self.student(self.enc_s(self.all_x[j])), targets[j], self.w)
            self.opt_s.zero_grad()
            loss.backward()
            self.opt_s.step()
            s_loss += loss.item() * len(j)
        return s_loss, sum(len(j) for j in perm)


def selection_score(v: dict[str, float]) -> tuple[float, float]:
    """Checkpoint score on validation: mean of the teacher's and the student's bag AUC, minus 0.1 x the
    teacher's validation cross-entropy (AUC saturates on small validation sets; the loss still ranks
    calibration); ties broken by the loss alone."""
    auc = float(np.nanmean([v["teacher_bag_auc"], v["student_bag_auc"]]))
    auc = 0.0 if math.isnan(auc) else auc
    return (round(auc - 0.1 * v["teacher_val_loss"], 4), -v["teacher_val_loss"])


@torch.no_grad()
def _student_probs(enc: nn.Module, student: nn.Module, x: torch.Tensor,
                   offset: torch.Tensor | None = None) -> torch.Tensor:
    """Student probabilities [N, C] in eval mode (logits minus ``offset`` [C] when given: calibrated),
    restoring each module's train/eval flags after."""
    flags = [(m, m.training) for m in list(enc.modules()) + list(student.modules())]
    enc.eval(), student.eval()
    logits = student(enc(x))
    p = torch.softmax(logits if offset is None else logits - offset.to(logits.dtype), -1)
    for m, f in flags:
        m.train(f)
    return p


@torch.no_grad()
def _pseudo_targets(tr: Bags, enc: nn.Module, teacher: MILModel, norm: str, neg: int, C: int,
                    neg_quantile: float, source: str = "attention") -> torch.Tensor:
    """Soft targets [M, C] for every training instance (bags concatenated in order), from the teacher's
    attention, its singleton instance classifier, or both (``source``; see ``WenoConfig.pseudo_source``)."""
    enc.eval(), teacher.eval()
    att, single = [], []
    for x, y in zip(tr.features, tr.labels):
        z = enc(x).unsqueeze(0)
        cls = int(y) if int(y) != neg else (1 - neg if C == 2 else 0)
        if source in ("attention", "fused"):
            att.append(teacher_evidence(teacher(z).instance_scores, cls)[0])
        if source in ("singleton", "fused"):
            lg = teacher.instance_logits(z)[0].float()
            single.append(lg[:, cls] - lg[:, neg])
    pos = [int(y) != neg for y in tr.labels]
    parts = [minmax_pseudo_labels(sc, pos, norm, neg_quantile=neg_quantile)  # type: ignore[arg-type]
             for sc in (att, single) if sc]
    ys = parts[0] if len(parts) == 1 else [0.5 * (a + b) for a, b in zip(*parts)]
    return torch.cat([soft_targets(y, int(c), neg, C) for y, c in zip(ys, tr.labels)])


@torch.no_grad()
def _validate(labeler: InstanceLabeler, va: Bags) -> dict[str, float]:
    """Validation bag AUCs (teacher output and the student's max-tile rule) and the teacher's CE loss."""
    for m in labeler.modules.values():
        m.eval()
    t_probs, s_probs, losses = [], [], []
    for x, y in zip(va.features, va.labels):
        # the teacher's bag output and the student's own tiles, whatever the output rules (blend trains the same)
        pred = labeler.predict(x.numpy(), bag_score="teacher", tile_score="student")
        t_probs.append(pred.bag_probs)
        s_probs.append(max_bag_probs(torch.as_tensor(pred.instance_probs), labeler.neg).numpy())
        losses.append(-math.log(max(float(pred.bag_probs[int(y)]), 1e-7)))
    tp, sp = np.stack(t_probs), np.stack(s_probs)
    return {
        "teacher_bag_auc": bag_auc(tp, va.labels, labeler.neg),
        "student_bag_auc": bag_auc(sp, va.labels, labeler.neg),
        "teacher_val_loss": float(np.mean(losses)),
    }


def load_config(path: str | Path) -> WenoConfig:
    """Read a WENO config YAML (for scripts)."""
    return validate_config(WenoConfig, read_yaml(path), str(path))
