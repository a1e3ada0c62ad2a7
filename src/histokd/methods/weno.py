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
- **Pseudo-labels** (:func:`minmax_pseudo_labels`): the teacher's instance evidence ``s`` (pre-softmax
  attention logit for ABMIL, the bag class's instance-classifier logit for DSMIL), min-max scaled and
  clamped to ``[1e-5, 1 - 1e-5]`` in positive bags, 0 in negative bags. ``pseudo_norm=negative``
  (default) takes max over every training instance of the last teacher pass and min = the
  ``pseudo_neg_quantile`` (0.95) quantile of the negative bags' evidence, so a tile the teacher scores
  like negative-bag tiles gets target 0 in a positive bag too; ``pseudo_norm=global`` (the authors'
  code) takes min and max over every training instance, ``pseudo_norm=bag`` per bag. Targets are
  computed once per epoch, after the teacher step, with the teacher and encoder in eval mode (the
  authors recompute them per minibatch with dropout on; ours are deterministic).
- **Student loss** (:func:`weighted_soft_ce`): class-weighted soft cross-entropy. ``class_weights=
  authors`` is the authors' 0.1 (negative) / 0.9 (positive); ``balanced`` weights each class by the
  inverse of its total target mass in the epoch; ``none`` is plain soft CE.
- **Alternation**: each epoch = one teacher pass over the training bags, then one student pass over
  every training instance (shuffled, ``instance_batch`` per step; repeated passes until at least
  ``min_student_steps`` steps, so that small cohorts train the student as often as the teacher); both
  passes update ``f``.
- **Hard positive mining** (:func:`hard_positive_keep`): from epoch ``hpm_warmup`` on, in every positive
  training bag the instances with student probability ``> hpm_threshold`` are dropped before the
  teacher sees the bag (the argmax is kept when nothing remains): hard pseudo-bags. With ``calibrate``
  the threshold applies to the calibrated probabilities (as at prediction).
- **Validation, never test**: the checkpoint is the epoch with the best validation score (mean of the
  teacher's bag AUC and the student's max-tile bag AUC, minus 0.1 x the teacher's validation
  cross-entropy, :func:`selection_score`), with early
  stopping (``patience``). ``hpm_threshold_grid`` trains once per threshold and keeps the best on
  validation. The instance decision threshold is the validation F1-optimal one where the validation
  bags carry instance labels, else 0.5.
- **Outputs**: ``instance_probs`` = the student's probabilities, ``instance_scores`` = the teacher's
  evidence ``s``; bag probabilities = the max-tile rule (``bag_score=max``) or the teacher's output
  (``bag_score=teacher``).

- **Calibration** (``calibrate``): the class-weighted loss biases the student's probabilities
  (:func:`student_logit_offset`); the bias is removed from its logits at prediction.

Deviations from the paper, for a CPU: Adam (lr 1e-3) instead of SGD over 1,500 epochs; a 256-wide
student instead of 2×4096; one torch thread while fitting (``threads``, see :func:`torch_threads`).

Multi-class labels: one class is the *negative* class (the class that is not ``tumour`` for two
classes, else ``negative_class`` or the first class); an instance of a bag of class ``c`` gets the soft
target ``y·e_c + (1-y)·e_neg``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histokd.config import BaseConfig, read_yaml, validate_config
from histokd.errors import InputError, ModelError, one_line
from histokd.methods.base import (
    Labeler,
    Method,
    Prediction,
    load_model_state,
    read_model_meta,
    register_method,
    write_model_meta,
)
from histokd.models.base import MILModel, build_model
from histokd.models.student import InstanceHead, ProjectionEncoder
from histokd.workspace import atomic_path

log = logging.getLogger("histokd")


# --------------------------------------------------------------------------------------------------
# bags in memory
# --------------------------------------------------------------------------------------------------


@dataclass
class Bags:
    """Bags held in memory: ``features[i]`` [N_i, D] float32, ``labels`` [B] int class indices,
    ``instance_labels[i]`` [N_i] int (-1 unknown) or ``None``; ``classes`` in index order."""

    features: list[torch.Tensor]
    labels: np.ndarray
    instance_labels: list[np.ndarray] | None = None
    classes: list[str] = field(default_factory=lambda: ["negative", "positive"])
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        return int(self.features[0].shape[-1])


def _get(item: Any, *names: str) -> Any:
    for n in names:
        if isinstance(item, dict) and n in item:
            return item[n]
        if hasattr(item, n):
            return getattr(item, n)
    return None


def as_bags(ds: Any, n_classes: int | None = None) -> Bags:
    """Adapt a bag dataset (``histokd.data.bags.BagDataset``, a list of ``(features, label)`` pairs, or
    :class:`Bags`) to in-memory :class:`Bags`.

    Items may be mappings / objects with ``features`` (or ``x``), ``label`` (or ``y``) and optionally
    ``instance_labels``, or tuples ``(features, label[, instance_labels])``.
    """
    if isinstance(ds, Bags):
        return ds
    feats: list[torch.Tensor] = []
    labels: list[int] = []
    inst: list[np.ndarray] = []
    ids: list[str] = []
    has_inst = False
    for i in range(len(ds)):
        item = ds[i]
        if isinstance(item, (tuple, list)):
            x, y = item[0], item[1]
            il = item[2] if len(item) > 2 and not isinstance(item[2], str) else None
        else:
            x, y = _get(item, "features", "x"), _get(item, "label", "y")
            il = _get(item, "instance_labels", "instance_label")
            sid = _get(item, "slide_id", "bag_id", "id")
            if sid is not None:
                ids.append(str(sid))
        if x is None or y is None:
            raise InputError(f"bag {i}: the dataset item has no features/label; pass a BagDataset")
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise InputError(f"bag {i}: features must be [N, D] with N > 0, got {tuple(x.shape)}")
        feats.append(x)
        labels.append(int(np.asarray(y).reshape(-1)[0]))
        if il is not None:
            has_inst = True
            inst.append(np.asarray(il, dtype=np.int64).reshape(-1))
        else:
            inst.append(np.full(x.shape[0], -1, dtype=np.int64))
    classes = _get(ds, "classes")
    if classes is None:
        k = n_classes or max(2, max(labels) + 1 if labels else 2)
        classes = ["negative", "positive"] if k == 2 else [str(c) for c in range(k)]
    return Bags(feats, np.asarray(labels, dtype=np.int64), inst if has_inst else None, list(classes),
                ids if len(ids) == len(feats) else None)


def negative_class_index(classes: list[str], negative_class: str | None = None) -> int:
    """The class whose bags hold only negative instances (see the module docstring)."""
    if negative_class is not None:
        if negative_class not in classes:
            raise InputError(f"negative_class {negative_class!r} is not one of the classes {classes}")
        return classes.index(negative_class)
    if len(classes) == 2:
        pos = classes.index("tumour") if "tumour" in classes else 1
        return 1 - pos
    return 0


def prepare_bags(train: Any, val: Any, standardize: bool, val_fraction: float,
                 seed: int) -> tuple[Bags, Bags, torch.Tensor | None, torch.Tensor | None]:
    """Training and validation :class:`Bags`, z-scored with training statistics when ``standardize``.

    Without a validation set (``val`` None or empty) a seeded, label-stratified ``val_fraction`` of the
    training bags is held out, because checkpoints and thresholds are always chosen on validation bags.
    """
    tr = as_bags(train)
    if val is None or len(val) == 0:
        rng = np.random.default_rng(seed)
        hold = np.zeros(len(tr), bool)
        for c in np.unique(tr.labels):
            idx = rng.permutation(np.flatnonzero(tr.labels == c))
            hold[idx[: max(1, int(round(val_fraction * len(idx))))] if len(idx) > 1 else []] = True
        log.info("no validation bags given: holding out %d of %d training bags for validation", hold.sum(), len(tr))
        va = _subset(tr, np.flatnonzero(hold))
        tr = _subset(tr, np.flatnonzero(~hold))
    else:
        va = as_bags(val)
    mean = std = None
    if standardize:
        allx = torch.cat(tr.features)
        mean, std = allx.mean(0), allx.std(0).clamp_min(1e-6)
        tr = Bags([(x - mean) / std for x in tr.features], tr.labels, tr.instance_labels, tr.classes, tr.ids)
        va = Bags([(x - mean) / std for x in va.features], va.labels, va.instance_labels, va.classes, va.ids)
    return tr, va, mean, std


def _subset(b: Bags, idx: np.ndarray) -> Bags:
    return Bags([b.features[i] for i in idx], b.labels[idx],
                None if b.instance_labels is None else [b.instance_labels[i] for i in idx], b.classes,
                None if b.ids is None else [b.ids[i] for i in idx])


def pad_bags(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of [N_i, *S] -> padded [B, N_max, *S] and mask [B, N_max] (True = real instance); ``S`` is
    ``(D,)`` for features, ``(3, H, W)`` for tile images."""
    n = max(b.shape[0] for b in bags)
    x = bags[0].new_zeros(len(bags), n, *bags[0].shape[1:])
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, : b.shape[0]] = b
        mask[i, : b.shape[0]] = True
    return x, mask


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (``None``: leave as is), restoring them after.

    Why: every training step here is a handful of small matmuls (one bag, a 256-wide projection).
    With more than one thread each op pays an OpenMP barrier, and on a shared, loaded CPU a barrier
    waits for a descheduled thread: measured on the 2-core build machine, one WENO epoch on
    digit-bags took 20 s with 2 threads and 0.8 s with 1.
    """
    if n is None or n <= 0:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------------------------------
# pure building blocks (unit-tested)
# --------------------------------------------------------------------------------------------------


def minmax_pseudo_labels(
    scores: list[torch.Tensor],
    positive: list[bool],
    norm: Literal["global", "bag", "negative"] = "global",
    clamp: float = 1e-5,
    neg_quantile: float = 0.95,
) -> list[torch.Tensor]:
    """WENO's instance pseudo-labels: per bag ``scores[i]`` [N_i] -> targets [N_i] in [0, 1].

    Positive bags: ``(s - min) / (max - min)`` clamped to ``[clamp, 1 - clamp]``. ``global``: min and max
    over every instance of every bag (the authors' code); ``bag``: over the bag; ``negative``: min = the
    ``neg_quantile`` quantile of the instances of the *negative* bags, max over every instance (falls back
    to ``global`` without negative bags). Negative bags: 0.

    Why ``negative``: under the MIL assumption every instance of a negative bag is negative, so teacher
    evidence no higher than what negative bags reach says nothing positive. With ``global`` the bulk of a
    positive bag's normal tiles sits well above the global minimum (an outlier tile) and gets a target of
    0.3-0.5 while the same-looking tiles of negative bags get 0: the student then learns which *slide* a
    tile comes from instead of what tumour looks like (seen on the ``hard`` preset: student tile AUC 0.53
    against its teacher's 0.85).
    """
    if norm in ("global", "negative"):
        allv = torch.cat([s.reshape(-1) for s in scores])
        lo_g, hi_g = allv.min(), allv.max()
        negs = [s.reshape(-1) for s, pos in zip(scores, positive) if not pos]
        if norm == "negative" and negs:
            lo_g = torch.quantile(torch.cat(negs).float(), neg_quantile).to(allv.dtype)
    out = []
    for s, pos in zip(scores, positive):
        if not pos:
            out.append(torch.zeros_like(s))
            continue
        lo, hi = (lo_g, hi_g) if norm != "bag" else (s.min(), s.max())
        y = (s - lo) / (hi - lo).clamp_min(1e-12)
        out.append(y.clamp(clamp, 1 - clamp))
    return out


def hard_positive_keep(pos_prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """Hard positive mining: ``pos_prob`` [N] student probabilities -> keep mask [N] bool.

    Drops exactly the instances with probability ``> threshold``; if that drops all of them, keeps the
    argmax alone, so that the pseudo-bag is never empty.
    """
    keep = pos_prob <= threshold
    if not bool(keep.any()):
        keep = torch.zeros_like(keep)
        keep[int(pos_prob.argmax())] = True
    return keep


def soft_targets(y: torch.Tensor, bag_class: int, neg: int, n_classes: int) -> torch.Tensor:
    """[N] scalar pseudo-labels -> [N, C] distributions ``y·e_c + (1-y)·e_neg``."""
    t = torch.zeros(y.shape[0], n_classes, dtype=y.dtype)
    t[:, neg] = 1 - y
    t[:, bag_class] += y
    return t


def weighted_soft_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``-mean_j Σ_c w_c t_jc log p_jc``; ``logits``, ``targets`` [M, C], ``weights`` [C] or None."""
    logp = F.log_softmax(logits, dim=-1)
    wt = targets if weights is None else targets * weights
    return -(wt * logp).sum(-1).mean()


def max_bag_probs(inst_probs: torch.Tensor, neg: int) -> torch.Tensor:
    """The max-tile bag rule: ``inst_probs`` [N, C] -> bag probabilities [C].

    Each non-negative class gets its highest tile probability; the negative class gets 1 minus the
    largest of those; the vector is renormalised (for two classes it is exactly ``[1-m, m]``).
    """
    p = inst_probs.amax(0).clone()
    others = [c for c in range(p.shape[0]) if c != neg]
    p[neg] = 1 - p[others].max()
    p = p.clamp_min(0)
    return p / p.sum().clamp_min(1e-12)


def teacher_evidence(out_scores: torch.Tensor, cls: int | torch.Tensor) -> torch.Tensor:
    """Teacher instance evidence [B, N] from ``MILOutput.instance_scores`` ([B, N] attention logits, or
    [B, N, C] instance logits, of which class ``cls`` is taken: an int or a [B] tensor)."""
    if out_scores.dim() == 2:
        return out_scores
    if isinstance(cls, int):
        return out_scores[..., cls]
    return out_scores.gather(2, cls.view(-1, 1, 1).expand(-1, out_scores.shape[1], 1)).squeeze(-1)


def bag_auc(probs: np.ndarray, labels: np.ndarray, neg: int) -> float:
    """Bag AUC: positive-vs-negative class for two classes, else macro one-vs-rest; nan if one class."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels != neg, 1 - probs[:, neg]))
    try:
        return float(roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(probs.shape[1]))))
    except ValueError:
        return float(roc_auc_score(labels != neg, 1 - probs[:, neg]))


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold on ``scores`` maximising F1 against binary ``labels`` (0.5 when undefined)."""
    if labels.size == 0 or labels.min() == labels.max():
        return 0.5
    order = np.argsort(-scores)
    s, y = scores[order], labels[order].astype(np.float64)
    tp = np.cumsum(y)
    fp = np.cumsum(1 - y)
    f1 = 2 * tp / (tp + fp + y.sum())
    i = int(np.argmax(f1))
    return float(s[i])


# --------------------------------------------------------------------------------------------------
# shared labeller: encoder (optional) + teacher + instance student
# --------------------------------------------------------------------------------------------------


class InstanceLabeler(Labeler):
    """A trained teacher + student pair. ``predict(features [N, D])``: the student's tile probabilities
    (``instance_probs`` [N, C]), the teacher's evidence (``instance_scores`` [N]) and bag probabilities
    by ``bag_score`` (``max`` tile rule or ``teacher``)."""

    method = ""

    def __init__(self, modules: dict[str, nn.Module], meta: dict[str, Any],
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        self.modules = nn.ModuleDict(modules)
        self.meta = meta
        self.classes = list(meta["classes"])
        self.mean, self.std = mean, std  # training-set feature statistics (standardize=true)
        self.modules.eval()

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise raw features [N, D] with the training statistics stored with the model."""
        if self.mean is None or self.std is None:
            return x
        return (x - self.mean) / self.std.clamp_min(1e-6)

    # the pieces; subclasses override how the student scores instances
    @property
    def neg(self) -> int:
        return int(self.meta["negative_class"])

    @property
    def instance_threshold(self) -> float:
        return float(self.meta.get("instance_threshold", 0.5))

    def encode_teacher(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.modules["encoder"] if "encoder" in self.modules else None
        return x if enc is None else enc(x)

    def encode_student(self, x: torch.Tensor) -> torch.Tensor:
        if "student_encoder" in self.modules:
            return self.modules["student_encoder"](x)
        return self.encode_teacher(x)

    def student_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [M, D] (standardised) features -> student logits [M, C]; a MIL-net student (Distill-to-
        Label ``student=mil``) sees each instance as a bag of one."""
        if (self.meta.get("student") or {}).get("kind") == "mil":
            return self.modules["student"](x.unsqueeze(1)).bag_logits
        logits = self.modules["student"](self.encode_student(x))
        offset = self.meta.get("student_logit_offset")
        if offset is not None:  # undo the class-weight bias of the training loss (see WenoConfig.calibrate)
            logits = logits - torch.as_tensor(offset, dtype=logits.dtype)
        return logits

    def _input(self, features: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        if x.ndim != 2:
            raise InputError(f"features must be [N, D], got shape {tuple(x.shape)}")
        if x.shape[1] != self.meta["in_dim"]:
            raise InputError(
                f"features have {x.shape[1]} dimensions but the model was trained on {self.meta['in_dim']}; "
                "use the feature set (encoder) the model was trained with"
            )
        return self.transform(x)

    @torch.no_grad()
    def _teacher_out(self, x: torch.Tensor, chunk: int = 8192) -> Any:
        teacher: MILModel = self.modules["teacher"]  # type: ignore[assignment]
        z = torch.cat([self.encode_teacher(x[i : i + chunk]) for i in range(0, len(x), chunk)])
        return teacher(z.unsqueeze(0))

    @torch.no_grad()
    def teacher_bag_probs(self, features: np.ndarray) -> np.ndarray:
        """The teacher's own bag probabilities [C] for one bag ``features`` [N, D] (whatever ``bag_score``
        says): ``histokd bench`` reports them beside the student's bag output."""
        out = self._teacher_out(self._input(features))
        return torch.softmax(out.bag_logits[0].float(), -1).numpy().astype(np.float32)

    @torch.no_grad()
    def predict(self, features: np.ndarray, chunk: int = 8192) -> Prediction:
        x = self._input(features)
        probs = torch.cat([torch.softmax(self.student_logits(x[i : i + chunk]), -1) for i in range(0, len(x), chunk)])
        out = self._teacher_out(x, chunk)
        t_probs = torch.softmax(out.bag_logits[0].float(), -1)
        scores = out.instance_scores[0]
        if scores.dim() == 2:  # [N, C] instance logits: evidence for the most likely non-negative class
            others = [c for c in range(scores.shape[1]) if c != self.neg]
            scores = scores[:, others].amax(-1)
        bag = t_probs if self.meta.get("bag_score", "max") == "teacher" else max_bag_probs(probs, self.neg)
        return Prediction(
            bag_probs=bag.numpy().astype(np.float32),
            instance_probs=probs.numpy().astype(np.float32),
            instance_scores=scores.float().numpy().astype(np.float32),
        )

    def save(self, directory: str | Path) -> None:
        """``model.pt`` = state dicts (+ feature mean/std); ``config.yaml`` = method, config and the
        architecture (``labeler`` key) needed to rebuild; ``classes.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        blob: dict[str, Any] = {f"{k}.{n}": v for k, m in self.modules.items() for n, v in m.state_dict().items()}
        if self.mean is not None and self.std is not None:
            blob["feature_mean"], blob["feature_std"] = self.mean, self.std
        with atomic_path(directory / "model.pt") as tmp:
            torch.save(blob, tmp)
        meta = _jsonable({k: v for k, v in self.meta.items() if k not in ("config", "classes")})
        write_model_meta(directory, self.method, self.meta.get("config", {}), self.classes,
                         in_dim=int(self.meta["in_dim"]), labeler=meta)

    @classmethod
    def load(cls, directory: str | Path) -> "InstanceLabeler":
        directory = Path(directory)
        info = read_model_meta(directory)
        meta = dict(info.get("labeler") or {})
        meta.update(classes=list(info["classes"]), config=info.get("config", {}))
        path = directory / "model.pt"
        blob = load_model_state(directory)
        modules = build_modules(meta)
        try:
            for k, m in modules.items():
                m.load_state_dict({n[len(k) + 1 :]: v for n, v in blob.items() if n.startswith(k + ".")})
        except (RuntimeError, TypeError, AttributeError) as e:
            raise ModelError(f"{path} does not match config.yaml ({one_line(e)}); retrain") from None
        return cls.class_for(meta)(modules, meta, blob.get("feature_mean"), blob.get("feature_std"))

    @classmethod
    def class_for(cls, meta: dict[str, Any]) -> type["InstanceLabeler"]:
        """The labeller class that serves a saved ``meta`` (subclasses may pick a pixel labeller)."""
        return cls


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items()
            if k != "history" and isinstance(v, (int, float, str, bool, list, dict, type(None)))}


def _projection_encoder(in_dim: int, args: dict[str, Any]) -> nn.Module:
    return ProjectionEncoder(in_dim, **args)


def _cnn_encoder(in_dim: int, args: dict[str, Any]) -> nn.Module:
    from histokd.models.tile_cnn import TileCNN

    return TileCNN(out_dim=int(args["out_dim"]), arch=str(args.get("arch", "tiny")))


SHARED_ENCODERS: dict[str, Any] = {"projection": _projection_encoder, "cnn": _cnn_encoder}
"""Shared-encoder builders by ``meta["encoder"]["kind"]`` (``projection`` when absent: older models)."""


def build_encoder(in_dim: int, spec: dict[str, Any]) -> nn.Module:
    """The shared encoder described by ``spec`` (``kind`` + its arguments), on ``in_dim`` inputs."""
    args = dict(spec)
    kind = args.pop("kind", "projection")
    if kind not in SHARED_ENCODERS:
        raise ModelError(f"unknown shared encoder kind {kind!r}; known: {', '.join(SHARED_ENCODERS)}")
    return SHARED_ENCODERS[kind](in_dim, args)


def build_modules(meta: dict[str, Any]) -> dict[str, nn.Module]:
    """Rebuild encoder / teacher / student modules from the labeller's ``meta`` (saved with the model)."""
    in_dim, n_classes = int(meta["in_dim"]), int(meta["n_classes"])
    mods: dict[str, nn.Module] = {}
    t_in = in_dim
    s_in = in_dim
    enc = meta.get("encoder")
    if enc:
        mods["encoder"] = build_encoder(in_dim, enc)
        t_in = s_in = int(enc["out_dim"])
        if meta.get("student_encoder"):
            mods["student_encoder"] = build_encoder(in_dim, meta["student_encoder"])
    mods["teacher"] = build_model(meta["teacher"], t_in, n_classes, meta.get("teacher_args") or {})
    st = meta.get("student")
    if st is not None:
        if st.get("kind", "head") == "mil":
            mods["student"] = build_model(meta["teacher"], in_dim, n_classes, meta.get("teacher_args") or {})
        else:
            mods["student"] = InstanceHead(s_in, n_classes, tuple(st["hidden"]), float(st.get("dropout", 0.0)))
    return mods


# --------------------------------------------------------------------------------------------------
# WENO
# --------------------------------------------------------------------------------------------------


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
    lr: float = 1e-3
    weight_decay: float = 1e-4
    bag_batch: int = 1
    instance_batch: int = 512
    min_student_steps: int = 50  # per epoch; extra shuffled passes when the cohort is small
    max_bag_size: int | None = None  # random subset of a larger bag per teacher step (prediction uses all)
    class_weights: Literal["authors", "balanced", "none"] = "authors"
    neg_weight: float = 0.1  # authors' weights: neg_weight / (1 - neg_weight)
    pseudo_norm: Literal["global", "bag", "negative"] = "negative"
    pseudo_neg_quantile: float = 0.95  # pseudo_norm=negative: negative-bag evidence quantile mapped to 0
    hpm: bool = True
    hpm_warmup: int = 10
    hpm_threshold: float = 0.5
    hpm_threshold_grid: list[float] = []
    bag_score: Literal["max", "teacher"] = "max"
    calibrate: bool = True  # undo the class weights' bias in the student's logits at prediction
    negative_class: str | None = None
    patience: int = 20
    standardize: bool = True  # z-score features with training statistics (stored with the model)
    val_fraction: float = 0.2  # held out of train (stratified) when no validation split is given
    threads: int | None = 1  # torch threads while fitting (see torch_threads); None = torch's default
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
    (:func:`histokd.data.tile_images.read_tile_images`, ``tile_px`` px covering each tile).
    """

    def _input(self, features: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(features))
        if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
            raise InputError(f"end-to-end WENO labels tile images [N, 3, H, W]; got shape {tuple(x.shape)} "
                             "(features cannot be used: this model was trained on pixels)")
        return x if x.shape[1] == 3 else x.permute(0, 3, 1, 2).contiguous()

    def predict(self, features: np.ndarray, chunk: int = 512) -> Prediction:
        return super().predict(features, chunk)

    def predict_slide(self, slide_row: Any, features: np.ndarray | None, coords: np.ndarray,
                      patch_size_level0: float | None = None) -> Prediction:
        """Label one slide from its pixels: ``slide_row`` has ``path``; ``coords`` [N, 2] level-0 tile
        top-lefts; ``patch_size_level0`` their side (from the feature file). ``features`` are ignored."""
        from histokd.data.tile_images import read_tile_images

        path = slide_row["path"] if isinstance(slide_row, dict) else slide_row.path
        if patch_size_level0 is None:
            raise InputError(f"{path}: the feature file has no patch_size_level0; re-run `histokd embed`")
        img = read_tile_images(path, coords, float(patch_size_level0), int(self.meta["tile_px"]),
                               self.meta.get("tile_mpp"))
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

    def fit(self, train: Any, val: Any, config: Any = None) -> WenoLabeler:
        cfg = config if isinstance(config, WenoConfig) else validate_config(WenoConfig, config, "weno config")
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
        labeler.meta["instance_threshold"] = _val_instance_threshold(labeler, va)
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
        "bag_score": cfg.bag_score,
        "hpm_threshold": thr,
        "config": cfg.model_dump(mode="json"),
    }


def _val_instance_threshold(labeler: InstanceLabeler, va: Bags) -> float:
    """F1-optimal threshold on the validation bags' instance labels (0.5 when they have none)."""
    if va.instance_labels is None:
        return 0.5
    pos_cols = [c for c in range(int(labeler.meta["n_classes"])) if c != labeler.neg]
    s, y = [], []
    for x, il in zip(va.features, va.instance_labels):
        known = il >= 0
        if not known.any():
            continue
        p = labeler.predict(x.numpy()).instance_probs
        s.append(p[known][:, pos_cols].sum(1))
        y.append(il[known] > 0)
    if not s:
        return 0.5
    return best_f1_threshold(np.concatenate(s), np.concatenate(y))


def _fit_weno(tr: Bags, va: Bags, cfg: WenoConfig, seed: int) -> _Fitted:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    meta = _meta(cfg, tr, cfg.hpm_threshold)
    neg, C = int(meta["negative_class"]), int(meta["n_classes"])
    mods = build_modules(meta)
    labeler = WenoLabeler.class_for(meta)(mods, meta)
    enc_t: nn.Module = mods["encoder"]
    enc_s: nn.Module = mods.get("student_encoder", enc_t)
    teacher: MILModel = mods["teacher"]  # type: ignore[assignment]
    student: nn.Module = mods["student"]
    params_t = list(enc_t.parameters()) + list(teacher.parameters())
    params_s = list(student.parameters()) + ([] if cfg.shared_encoder else list(enc_s.parameters()))
    if cfg.shared_encoder:
        params_s += list(enc_t.parameters())
    # separate optimisers, as in the authors' code: each step moves its own head and the shared encoder
    opt_t = torch.optim.Adam(params_t, lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_s = torch.optim.Adam(list(dict.fromkeys(params_s)), lr=cfg.lr, weight_decay=cfg.weight_decay)
    all_x = torch.cat(tr.features)
    w: torch.Tensor | None = None  # the student loss's class weights of the last epoch
    bag_of = np.concatenate([np.full(len(b), i) for i, b in enumerate(tr.features)])
    best: tuple[float, float] | None = None
    best_state: dict[str, Any] | None = None
    history: list[dict[str, float]] = []
    stale = 0
    best_w: torch.Tensor | None = None
    t0 = time.time()
    for epoch in range(cfg.epochs):
        # ---- teacher pass (with hard positive mining after the warm-up) ----
        # BatchNorm statistics of one bag are biased by its own content (a bag of 10 tiles with 3
        # tumour tiles normalises the tumour away), so the teacher pass uses population statistics,
        # refreshed from random training instances, and never per-bag batch statistics.
        for e in {id(enc_t): enc_t, id(enc_s): enc_s}.values():
            refresh_batchnorm(e, all_x, gen)
        mods_train(mods)
        bn_eval(enc_t)
        mine = cfg.hpm and epoch >= cfg.hpm_warmup
        # the threshold applies to calibrated probabilities, as at prediction: with the authors' 0.1/0.9
        # weights a raw probability of 0.5 means a target of only 0.1, and mining would empty the bags
        calibrated = mine and cfg.calibrate and w is not None
        mine_offset = torch.as_tensor(student_logit_offset(w, neg)) if calibrated else None
        order = rng.permutation(len(tr))
        t_loss = 0.0
        for s in range(0, len(order), cfg.bag_batch):
            idx = order[s : s + cfg.bag_batch]
            bags = []
            for i in idx:
                x = tr.features[i]
                if cfg.max_bag_size and len(x) > cfg.max_bag_size:
                    x = x[torch.randperm(len(x), generator=gen)[: cfg.max_bag_size]]
                if mine and int(tr.labels[i]) != neg:
                    p = _student_probs(enc_s, student, x, mine_offset)[:, int(tr.labels[i])]
                    x = x[hard_positive_keep(p, cfg.hpm_threshold)]
                bags.append(x)
            xb, mb = pad_bags(bags)
            y = torch.as_tensor(tr.labels[idx])
            out = teacher(enc_t(xb, mb), mb)
            loss = teacher.bag_loss(out, y)
            extra = teacher.loss_extra(out, y)
            if extra is not None:
                loss = loss + extra
            opt_t.zero_grad()
            loss.backward()
            opt_t.step()
            t_loss += loss.item() * len(idx)
        # ---- pseudo-labels from the teacher (eval mode, full bags) ----
        targets = _pseudo_targets(tr, enc_t, teacher, cfg.pseudo_norm, neg, C, cfg.pseudo_neg_quantile)
        w = _class_weights(cfg, targets, neg)
        # ---- student pass over every training instance ----
        mods_train(mods)
        perm = student_schedule(len(all_x), cfg.instance_batch, cfg.min_student_steps, gen)
        s_loss = 0.0
        for j in perm:
            if len(j) < 2:
                continue  # BatchNorm needs two instances
            loss = weighted_soft_ce(student(enc_s(all_x[j])), targets[j], w)
            opt_s.zero_grad()
            loss.backward()
            opt_s.step()
            s_loss += loss.item() * len(j)
        # ---- validation ----
        v = _validate(labeler, va)
        v.update(epoch=epoch, teacher_loss=t_loss / len(tr), student_loss=s_loss / max(1, sum(len(j) for j in perm)))
        history.append(v)
        score = selection_score(v)
        if best is None or score > best:
            best, stale = score, 0
            best_state = {k: copy.deepcopy(m.state_dict()) for k, m in mods.items()}
            best_w = None if w is None else w.clone()
        else:
            stale += 1
        log.debug("weno epoch %d: %s", epoch, v)
        if stale >= cfg.patience:
            break
    log.info("weno: %d epochs in %.1f s; best validation score %s", len(history), time.time() - t0, best)
    assert best_state is not None and best is not None
    for k, m in mods.items():
        m.load_state_dict(best_state[k])
        m.eval()
    _ = bag_of
    return _Fitted(mods, best, history, best_w)


def selection_score(v: dict[str, float]) -> tuple[float, float]:
    """Checkpoint score on validation: mean of the teacher's and the student's bag AUC, minus 0.1 x the
    teacher's validation cross-entropy (AUC saturates on small validation sets; the loss still ranks
    calibration); ties broken by the loss alone."""
    auc = float(np.nanmean([v["teacher_bag_auc"], v["student_bag_auc"]]))
    auc = 0.0 if math.isnan(auc) else auc
    return (round(auc - 0.1 * v["teacher_val_loss"], 4), -v["teacher_val_loss"])


def student_schedule(m: int, batch: int, min_steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Minibatches of instance indices for one student pass: shuffled passes over all ``m`` training
    instances, repeated until there are at least ``min_steps`` steps (small cohorts would otherwise give
    the student one or two steps per epoch while the teacher gets one per bag)."""
    out: list[torch.Tensor] = []
    while True:
        perm = torch.randperm(m, generator=gen)
        out += [perm[s : s + batch] for s in range(0, m, batch)]
        if len(out) >= min_steps:
            return out


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
def refresh_batchnorm(enc: nn.Module, x: torch.Tensor, gen: torch.Generator, n: int = 8192, batch: int = 512) -> None:
    """Set the BatchNorm running statistics of ``enc`` to those of up to ``n`` random instances of ``x``."""
    bns = [m for m in enc.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was = enc.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the refresh batches
    enc.train()
    idx = torch.randperm(len(x), generator=gen)[:n]
    for s in range(0, len(idx), batch):
        j = idx[s : s + batch]
        if len(j) >= 2:
            enc(x[j])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    enc.train(was)


def bn_eval(enc: nn.Module) -> None:
    """Put the BatchNorm layers of ``enc`` in eval mode (use running statistics, do not update them)."""
    for m in enc.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def mods_train(mods: dict[str, nn.Module]) -> None:
    for m in mods.values():
        m.train()


@torch.no_grad()
def _pseudo_targets(tr: Bags, enc: nn.Module, teacher: MILModel, norm: str, neg: int, C: int,
                    neg_quantile: float) -> torch.Tensor:
    """Soft targets [M, C] for every training instance (bags concatenated in order)."""
    enc.eval(), teacher.eval()
    scores = []
    for x, y in zip(tr.features, tr.labels):
        out = teacher(enc(x).unsqueeze(0))
        scores.append(teacher_evidence(out.instance_scores, int(y) if int(y) != neg else (1 - neg if C == 2 else 0))[0])
    pos = [int(y) != neg for y in tr.labels]
    ys = minmax_pseudo_labels(scores, pos, norm, neg_quantile=neg_quantile)  # type: ignore[arg-type]
    return torch.cat([soft_targets(y, int(c), neg, C) for y, c in zip(ys, tr.labels)])


@torch.no_grad()
def _validate(labeler: InstanceLabeler, va: Bags) -> dict[str, float]:
    """Validation bag AUCs (teacher output and the student's max-tile rule) and the teacher's CE loss."""
    for m in labeler.modules.values():
        m.eval()
    t_probs, s_probs, losses = [], [], []
    bag_score = labeler.meta.get("bag_score", "max")
    labeler.meta["bag_score"] = "teacher"
    try:
        for x, y in zip(va.features, va.labels):
            pred = labeler.predict(x.numpy())
            t_probs.append(pred.bag_probs)
            s_probs.append(max_bag_probs(torch.as_tensor(pred.instance_probs), labeler.neg).numpy())
            losses.append(-math.log(max(float(pred.bag_probs[int(y)]), 1e-7)))
    finally:
        labeler.meta["bag_score"] = bag_score
    tp, sp = np.stack(t_probs), np.stack(s_probs)
    return {
        "teacher_bag_auc": bag_auc(tp, va.labels, labeler.neg),
        "student_bag_auc": bag_auc(sp, va.labels, labeler.neg),
        "teacher_val_loss": float(np.mean(losses)),
    }


def load_config(path: str | Path) -> WenoConfig:
    """Read a WENO config YAML (for scripts)."""
    return validate_config(WenoConfig, read_yaml(path), str(path))
