"""The labeller of the distillation methods: encoder (optional) + teacher + instance student.

:class:`InstanceLabeler` predicts, saves to and loads from a model folder (contract 7);
:func:`build_modules` rebuilds its modules from the ``meta`` saved with the model;
:func:`val_instance_threshold` chooses its instance decision threshold on the validation bags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histokd.errors import InputError, ModelError, one_line
from histokd.evaluate.metrics import best_f1_threshold
from histokd.methods.base import Labeler, Prediction, load_model_state, read_model_meta, write_model_meta
from histokd.methods.decision import apply_decision, choose_decision, saved_decision
from histokd.methods.distill.bags import Bags
from histokd.methods.distill.rules import top_bag_probs
from histokd.models.base import MILModel, build_model
from histokd.models.student import InstanceHead, ProjectionEncoder
from histokd.workspace import ModelFiles, atomic_path


class InstanceLabeler(Labeler):
    """A trained teacher + student pair. ``predict(features [N, D])``: the student's tile probabilities
    (``instance_probs`` [N, C]; with ``tile_score=blend`` in the meta, the softmax of the mean of the student's
    and the teacher's singleton logits, a product of the two experts), the teacher's evidence
    (``instance_scores`` [N]) and bag probabilities by ``bag_score``: ``top`` (the mean of the student's
    ``bag_top_k`` top tiles), ``max`` (its top tile) or ``teacher``. The tile rule never changes the slide score:
    ``max`` and ``top`` read the student's own tiles, blended or not."""

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
    def _teacher_input(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """``x`` [M, D] (standardised) through the teacher's encoder, in chunks -> [M, H]."""
        return torch.cat([self.encode_teacher(x[i : i + chunk]) for i in range(0, len(x), chunk)])

    @torch.no_grad()
    def _teacher_out(self, x: torch.Tensor, chunk: int = 8192, z: torch.Tensor | None = None) -> Any:
        teacher: MILModel = self.modules["teacher"]  # type: ignore[assignment]
        return teacher((self._teacher_input(x, chunk) if z is None else z).unsqueeze(0))

    @torch.no_grad()
    def teacher_instance_logits(self, x: torch.Tensor, chunk: int = 8192, z: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's logits [M, C] of each instance of ``x`` [M, D] (standardised) seen alone, as a bag of
        one (:meth:`~histokd.models.base.MILModel.instance_logits`, chunked inside); ``z``: ``x`` already
        through the teacher's encoder (:meth:`_teacher_input`)."""
        teacher: MILModel = self.modules["teacher"]  # type: ignore[assignment]
        return teacher.instance_logits((self._teacher_input(x, chunk) if z is None else z).unsqueeze(0))[0].float()

    @torch.no_grad()
    def teacher_singleton_probs(self, features: np.ndarray) -> np.ndarray:
        """The teacher's own output on each tile seen as a bag of one, [N, C] probabilities: the naive
        instance labeller that distillation is meant to improve on (``histokd bench`` reports its tile
        AUC as ``instance_from_teacher_singleton``, and keeps it per tile as ``tile_teacher_probs``)."""
        return torch.softmax(self.teacher_instance_logits(self._input(features)), -1).numpy().astype(np.float32)

    @torch.no_grad()
    def teacher_bag_probs(self, features: np.ndarray) -> np.ndarray:
        """The teacher's own bag probabilities [C] for one bag ``features`` [N, D] (whatever ``bag_score``
        says): ``histokd bench`` reports them beside the student's bag output."""
        out = self._teacher_out(self._input(features))
        return torch.softmax(out.bag_logits[0].float(), -1).numpy().astype(np.float32)

    @torch.no_grad()
    def predict(self, features: np.ndarray, chunk: int = 8192, *, bag_score: str | None = None,
                tile_score: str | None = None) -> Prediction:
        """``bag_score`` (``max``, ``top`` or ``teacher``) and ``tile_score`` (``student`` or ``blend``) pick the bag and
        tile probabilities for this call; None: the model's own (``meta``). Nothing of the labeller changes."""
        x = self._input(features)
        z = self._teacher_input(x, chunk)  # once, for the teacher's bag output and (blend) its single tiles
        logits = torch.cat([self.student_logits(x[i : i + chunk]) for i in range(0, len(x), chunk)])
        s_probs = torch.softmax(logits, -1)  # the student's own tiles: what max / top slide scores read
        if (tile_score or self.meta.get("tile_score", "student")) == "blend":
            logits = 0.5 * (logits.float() + self.teacher_instance_logits(x, z=z))
        probs = torch.softmax(logits, -1)
        out = self._teacher_out(x, z=z)
        t_probs = torch.softmax(out.bag_logits[0].float(), -1)
        scores = out.instance_scores[0]
        if scores.dim() == 2:  # [N, C] instance logits: evidence for the most likely non-negative class
            others = [c for c in range(scores.shape[1]) if c != self.neg]
            scores = scores[:, others].amax(-1)
        rule = self.meta.get("bag_score", "max") if bag_score is None else bag_score
        if rule == "teacher":
            bag = t_probs.numpy().astype(np.float32)
        else:  # max: the top tile; top: the mean of the bag_top_k top tiles (rules.top_bag_probs)
            k = int(self.meta.get("bag_top_k", 3)) if rule == "top" else 1
            bag = top_bag_probs(s_probs, self.neg, k).numpy().astype(np.float32)
        if bag_score is None:  # the model's own rule: its slide cut (methods.decision) applies
            bag = apply_decision(bag, self.meta.get("decision"), 1 - self.neg)
        return Prediction(
            bag_probs=bag,
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
        with atomic_path(ModelFiles(directory).weights) as tmp:
            torch.save(blob, tmp)
        meta = _jsonable({k: (saved_decision(v) if k == "decision" else v) for k, v in self.meta.items()
                          if k not in ("config", "classes")})
        write_model_meta(directory, self.method, self.meta.get("config", {}), self.classes,
                         in_dim=int(self.meta["in_dim"]), labeler=meta)

    @classmethod
    def load(cls, directory: str | Path) -> "InstanceLabeler":
        directory = Path(directory)
        info = read_model_meta(directory)
        meta = dict(info.get("labeler") or {})
        meta.update(classes=list(info["classes"]), config=info.get("config", {}))
        path = ModelFiles(directory).weights
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


def fit_decision(labeler: InstanceLabeler, tr: Any, va: Any) -> dict[str, Any] | None:
    """The slide cut of a two-class labeller (:func:`histokd.methods.decision.choose_decision`) from its
    validation and training :class:`Bags` (one prediction pass over each; the training bags place the cut
    where validation lacks a class or does not order the classes). Call it before the labeller gets its
    feature statistics: the bags here are already standardised."""
    if int(labeler.meta["n_classes"]) != 2:
        return None
    pos = 1 - labeler.neg
    return choose_decision(lambda x: float(labeler.predict(x.numpy()).bag_probs[pos]),
                           tr.features, [int(y) == pos for y in tr.labels],
                           va.features, [int(y) == pos for y in va.labels])


def val_instance_threshold(labeler: InstanceLabeler, va: Bags) -> float:
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
