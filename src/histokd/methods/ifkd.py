"""IFKD (He et al. 2024, IKD-MIL): tumour segmentation from MIL pseudo-masks by iterative fusion
knowledge distillation. ``histokd train -w RUN --method ifkd --teacher MODEL_ID``.

What we implement:

1. **Pseudo-masks** (:mod:`histokd.segmentation.pseudo`): the teacher's positive-class tile
   probabilities (``RUN/predictions/<teacher>/<slide>.h5``, or the teacher's labeller run on the
   features when that file is missing) painted into a per-slide map at ``work_mpp`` (8 µm/px by
   default) with area-weighted averaging of overlapping tiles. Tumour-free slides (label known
   negative) get an all-zero target whatever the teacher says.
2. **Segmentation student** (:mod:`histokd.models.segnet`): a multi-side-output CNN (``net=sidenet``,
   side maps fused with weights ``side_weights``, default 0.3/0.3/0.4) or a small U-Net (``net=unet``),
   trained on random ``region_size``² crops of the slides read at ``work_mpp``, centred on tissue, with
   flips / 90° rotations. Loss (:func:`histokd.segmentation.losses.seg_loss`): soft Dice on every side
   map and the fused map + binary cross-entropy against the *soft* target on the fused map, weighted per
   pixel by an online example weighting: per image ``w = HW · softmax(±ℓ/τ)`` (mean 1), ``hard`` (high-
   loss pixels weigh more; the default) or ``easy`` (the OEEM-style weighting of the reference code) or
   ``none``; images whose target has a single class get ``w = 1``.
3. **Fusion and role swaps** (:mod:`histokd.methods.ifkd_core`): K ``rounds``; after each, the next
   target is ``teacher_weight · teacher + (1 - teacher_weight) · student``; teacher and student swap
   when the student's validation score is strictly higher. Each round's ``epochs_per_round`` epochs run in
   the engine's epoch loop (:func:`histokd.engine.fit_epochs`); ``max_epochs`` (``histokd train
   --max-epochs``) caps them.
4. **Validation, never test**: the score is the best pooled Dice over thresholds against the val
   slides' ground-truth masks when they have ``mask_path``; otherwise agreement with the MIL
   pseudo-masks (tumour-free slides: all background). The returned net, the Gaussian smoothing
   ``sigma`` and the threshold are chosen on the same score. Test slides are only *reported*
   (``metrics.json`` ``pixel`` block: the MIL pseudo-masks and every round's student, each with its own
   validation-chosen calibration), read from the test split that ``histokd train`` hands over.

Output of ``histokd label``: a pixel mask per slide at ``work_mpp`` (``mask`` uint8 0/1 with attr
``mask_downsample`` = level-0 px per mask px), tile probabilities = mean of the smoothed map over each
tile, bag probability = the maximum tile probability.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from histokd.config import BaseConfig, read_yaml, validate_config, write_yaml
from histokd.engine.epochs import stage_epochs
from histokd.engine.runtime import RuntimeConfig, single_process
from histokd.errors import HistokdError, InputError, ModelError, one_line
from histokd.evaluate.pixel import detect_lesions, froc, summarise_slides
from histokd.methods.base import (
    Labeler,
    Method,
    Prediction,
    load_model_state,
    model_positive_class,
    read_model_meta,
    register_method,
    write_model_meta,
)
from histokd.methods.ifkd_core import LoopSettings, calibrate, run_ifkd
from histokd.models.segnet import build_segnet
from histokd.progress import progress
from histokd.data.slide_source import SlideSource
from histokd.segmentation.io import build_slide_image
from histokd.segmentation.pseudo import TileProbs, read_prediction_probs, tile_means
from histokd.segmentation.regions import SlideImage, predict_map, smooth
from histokd.workspace import ModelFiles, Workspace, atomic_path, write_json

log = logging.getLogger("histokd")


class IFKDConfig(BaseConfig):
    """IFKD hyper-parameters (see the module docstring)."""

    teacher: str | None = None
    """Model ID of the trained MIL teacher / distilled student giving the pseudo-masks (required)."""
    workspace: str | None = None
    """Run folder; by default the one the training feature files live in."""
    work_mpp: float = Field(8.0, gt=0)
    """Working resolution of the segmentation, µm/px."""
    net: Literal["sidenet", "unet"] = "sidenet"
    widths: list[int] = [16, 32, 64]
    side_weights: list[float] | None = None
    rounds: int = Field(3, ge=1)
    epochs_per_round: int = Field(15, ge=1)
    max_epochs: int | None = Field(None, ge=1)
    """Caps ``epochs_per_round`` (``histokd train --max-epochs``)."""
    regions_per_slide: int = Field(8, ge=1)
    region_size: int = Field(96, ge=16)
    batch_size: int = Field(16, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    teacher_weight: float = Field(0.5, ge=0, le=1)
    dice_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)
    example_weighting: Literal["hard", "easy", "none"] = "hard"
    temperature: float = Field(1.0, gt=0)
    sigmas: list[float] = [0.0, 1.0, 2.0, 3.0]
    """Gaussian smoothing candidates (working px) for the validation calibration."""
    window: int = Field(512, ge=32)
    seed: int = 0
    runtime: RuntimeConfig = RuntimeConfig()
    """``--precision`` of every round (one CPU process: :func:`histokd.engine.runtime.single_process`)."""

    def loop(self) -> LoopSettings:
        return LoopSettings(
            net=self.net, widths=tuple(self.widths), side_weights=self.side_weights, rounds=self.rounds,
            epochs_per_round=stage_epochs(self.epochs_per_round, self.max_epochs),
            regions_per_slide=self.regions_per_slide,
            region_size=self.region_size, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
            teacher_weight=self.teacher_weight, dice_weight=self.dice_weight, ce_weight=self.ce_weight,
            example_weighting=self.example_weighting, temperature=self.temperature, window=self.window,
            precision=single_process(self.runtime, "ifkd"),
            seed=self.seed,
        )


# --------------------------------------------------------------------------------------------- data


def _records(ds: Any) -> list[Any]:
    if ds is None:
        return []
    recs = getattr(ds, "records", None)
    if recs is None:
        raise InputError("IFKD needs bag datasets built from a workspace (BagDataset.from_workspace)")
    return list(recs)


def _workspace_of(train: Any, cfg: IFKDConfig) -> Workspace:
    """The run folder holding the teacher's model and predictions: the one given, else the training bags'."""
    if cfg.workspace:
        return Workspace(cfg.workspace)
    for r in _records(train):
        p = getattr(r, "path", None)
        if p is not None:  # RUN/features/<encoder>/<slide>.h5
            return Workspace.of_features_file(p)
    raise InputError("ifkd: cannot tell the run folder from the bags; pass --set workspace=RUN")


def teacher_tiles(ws: Workspace, teacher: str, slide_id: str, feature_path: Path | None) -> TileProbs:
    """The teacher's tile probabilities for a slide: from its predictions, else by running its labeller."""
    pred = ws.predictions_h5(teacher, slide_id)
    if pred.exists():
        return read_prediction_probs(pred)
    if feature_path is None or not Path(feature_path).exists():
        raise ModelError(f"{pred}: no teacher predictions and no features for {slide_id}; "
                         f"run `histokd label -w {ws.root} --model {teacher}` first")
    from histokd.features.store import read_features
    from histokd.methods import load_labeler

    ff = read_features(feature_path)
    lab = load_labeler(ws.model_dir(teacher))
    p = lab.predict(ff.features)
    meta = read_model_meta(ws.model_dir(teacher))
    classes = _model_classes(ws.model_dir(teacher), p.instance_probs.shape[1], meta)
    col = model_positive_class({**meta, "classes": classes}) if p.instance_probs.shape[1] > 1 else 0
    ps = ff.attrs.get("patch_size_level0")
    if ps is None:
        raise ModelError(f"{feature_path}: no patch_size_level0 attribute; re-run `histokd embed`")
    return TileProbs(p.instance_probs[:, col].astype(np.float32), ff.coords, float(ps), classes)


def _model_classes(model_dir: Path, n: int, meta: dict[str, Any] | None = None) -> list[str]:
    """The classes stored with a model (:func:`read_model_meta`); ``0..n-1`` where it stored none."""
    meta = read_model_meta(model_dir) if meta is None else meta
    return list(meta.get("classes") or [str(i) for i in range(n)])


def load_slides(ws: Workspace, ds: Any, teacher: str, work_mpp: float, desc: str) -> tuple[list[SlideImage], dict[str, str]]:
    """Every bag's slide of ``ds`` (read through ``ds.slide(i)``) at ``work_mpp``, with the teacher's
    pseudo-mask and the slide's GT mask; failures are returned, not raised."""
    out: list[SlideImage] = []
    failed: dict[str, str] = {}
    if ds is None or len(ds) == 0:
        return out, failed
    pos = ds.positive_index  # the dataset's positive class (classes.positive_class), stored with the model at save
    with progress() as bar:
        task = bar.add_task(desc, total=len(ds), unit="slide")
        for i, rec in enumerate(ds.records):
            try:
                src = ds.slide(i)
                tiles = teacher_tiles(ws, teacher, rec.slide_id, rec.path)
                image, dims0 = src.read_at_mpp(work_mpp)
                label = -1 if rec.label < 0 else int(rec.label == pos)  # 1 tumour, 0 tumour-free, -1 unknown
                out.append(build_slide_image(rec.slide_id, image, dims0, tiles, label, src.mask_path))
            except HistokdError as e:
                failed[rec.slide_id] = str(e)
                log.warning("ifkd: slide %s left out: %s", rec.slide_id, e)
            bar.advance(task)
    return out, failed


# --------------------------------------------------------------------------------------------- labeler


@dataclass
class SegPrediction(Prediction):
    """A :class:`Prediction` with the pixel mask's geometry: ``mask_downsample`` = level-0 px per mask px
    (written as the ``mask_downsample`` attribute of the predictions h5)."""

    mask_downsample: float | None = None


class IFKDLabeler(Labeler):
    """A trained IFKD segmenter. It needs the slide's pixels: use :meth:`predict_slide`."""

    method = "ifkd"

    def __init__(self, net: torch.nn.Module, meta: dict[str, Any]) -> None:
        self.net = net.eval()
        self.meta = meta
        self._teacher: Labeler | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def predict(self, features: np.ndarray) -> Prediction:
        """Without the slide's pixels IFKD cannot segment: the bag and tile probabilities of its MIL
        teacher are returned (no mask). ``histokd label`` calls :meth:`predict_slide` instead."""
        if self._teacher is None:
            tdir = self.meta.get("teacher_dir")
            if not tdir or not Path(tdir).is_dir():
                raise ModelError(f"ifkd: teacher model folder {tdir!r} not found; ifkd needs the slide pixels "
                                 f"(run `histokd label -w RUN --model ID`) or its teacher")
            from histokd.methods.base import load_labeler

            self._teacher = load_labeler(tdir)
        return self._teacher.predict(features)

    def prob_map(self, image: np.ndarray) -> np.ndarray:
        """Smoothed tumour probability [h, w] of a slide image [h, w, 3] uint8 at ``work_mpp``."""
        return smooth(predict_map(self.net, image, window=int(self.meta.get("window", 512))),
                      float(self.meta["sigma"]))

    def predict_slide(self, slide: Any, features: np.ndarray | None, coords: np.ndarray,
                      patch_size_level0: float | None = None) -> Prediction:
        """Segment one slide. ``slide``: a :class:`~histokd.data.slide_source.SlideSource` (or a cohort row
        with ``path``); ``coords`` [N, 2] level-0 tile positions; ``patch_size_level0`` (default: the
        teacher's, saved at training).

        Returns ``mask`` [h, w] uint8 0/1 at ``work_mpp`` with ``mask_downsample`` (level-0 px per mask
        px, x axis), ``instance_probs`` [N, C] from the map, ``bag_probs`` [C] from the max tile.
        """
        image, dims0 = SlideSource.of(slide).read_at_mpp(float(self.meta["work_mpp"]))
        prob = self.prob_map(image)
        h, w = prob.shape
        ds = (dims0[0] / w, dims0[1] / h)
        ps = float(patch_size_level0 if patch_size_level0 is not None else self.meta["patch_size_level0"])
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        p = tile_means(prob, coords, ps, ds) if len(coords) else np.zeros(0, np.float32)
        n_cls = len(self.classes)
        pos = model_positive_class({**self.meta, "classes": self.classes})  # the class stored with the model
        inst = np.zeros((len(p), n_cls), np.float32)
        neg = [c for c in range(n_cls) if c != pos]
        inst[:, pos] = p
        for c in neg:  # the non-tumour probability mass is split evenly over the other classes
            inst[:, c] = (1.0 - p) / len(neg)
        pmax = float(p.max()) if len(p) else float(prob.max())
        bag = np.full(n_cls, (1.0 - pmax) / max(len(neg), 1), np.float32)
        bag[pos] = pmax
        mask = (prob >= float(self.meta["threshold"])).astype(np.uint8)
        return SegPrediction(bag_probs=bag, instance_probs=inst, instance_scores=p.astype(np.float32), mask=mask,
                          mask_downsample=float(ds[0]))

    def save(self, directory: str | Path) -> None:
        """``model.pt`` (the net's state dict only), ``config.yaml`` (method, config, calibration, net
        spec, history), ``classes.json`` and ``pixel_metrics.json`` (validation / test pixel metrics)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = ModelFiles(directory)
        with atomic_path(files.weights) as tmp:
            torch.save({"net": self.net.state_dict()}, tmp)
        extra = {k: v for k, v in self.meta.items() if k not in ("method", "config", "classes", "pixel_metrics")}
        write_model_meta(directory, self.method, self.meta.get("config", {}), self.classes, **extra)
        if "pixel_metrics" in self.meta:
            write_json(files.pixel_metrics, self.meta["pixel_metrics"])

    @classmethod
    def load(cls, directory: str | Path) -> "IFKDLabeler":
        directory = Path(directory)
        meta = read_model_meta(directory)
        validate_config(IFKDConfig, meta.get("config"), str(ModelFiles(directory).config))
        net = build_segnet(meta["net"], meta["widths"], meta.get("side_weights"))
        state = load_model_state(directory, retrain="`histokd train --method ifkd ... --overwrite`")
        try:
            net.load_state_dict(state["net"])
        except (RuntimeError, KeyError, TypeError, AttributeError) as e:
            raise ModelError(f"{directory}/model.pt does not match config.yaml ({one_line(e)}); retrain") from None
        pm = ModelFiles(directory).pixel_metrics
        if pm.exists():
            meta["pixel_metrics"] = json.loads(pm.read_text())
        return cls(net, meta)


# --------------------------------------------------------------------------------------------- method


def _maps_of(state: dict[str, torch.Tensor], cfg: IFKDConfig, slides: list[SlideImage]) -> list[np.ndarray]:
    net = build_segnet(cfg.net, cfg.widths, cfg.side_weights)
    net.load_state_dict(state)
    return [predict_map(net, s.image, window=cfg.window) for s in slides]


def _report(maps: list[np.ndarray], slides: list[SlideImage], sigma: float, thr: float, mpp: float) -> dict[str, Any]:
    """Pixel metrics (Dice, IoU, pixel AUC, Hausdorff in µm) and lesion FROC of ``maps`` on the slides
    with a GT mask. FROC candidates: local maxima (>= 2 working px apart) of the smoothed map above 0.05,
    each scored by its probability; lesions: GT connected components."""
    have = [i for i, s in enumerate(slides) if s.gt is not None]
    if not have:
        return {}
    sm = [smooth(maps[i], sigma) for i in have]
    gts = [slides[i].gt for i in have]
    out: dict[str, Any] = summarise_slides(sm, gts, thr, [mpp] * len(have))
    fr = froc([detect_lesions(m, 0.05, mode="maxima", min_distance=2) for m in sm], gts)
    out["froc"] = fr.score
    out["froc_sensitivity_at"] = {str(k): v for k, v in fr.sensitivity_at.items()}
    out["n_lesions"] = fr.n_lesions
    return out


@register_method("ifkd")
class IFKD(Method):
    """IFKD: a segmentation student distilled from MIL pseudo-masks with fusion and role swaps."""

    name = "ifkd"
    config_cls = IFKDConfig
    labeler_cls = IFKDLabeler

    @classmethod
    def check_config(cls, config: Any) -> None:
        config.loop()

    def fit(self, train: Any, val: Any, config: Any = None) -> IFKDLabeler:
        cfg = config if isinstance(config, IFKDConfig) else validate_config(IFKDConfig, config, "ifkd config")
        if config is None or (isinstance(config, dict) and "seed" not in config):
            cfg = cfg.model_copy(update={"seed": int(getattr(self, "seed", cfg.seed))})
        loop = cfg.loop()  # a runtime it cannot run is refused before any slide is read
        if not cfg.teacher:
            raise InputError("ifkd needs a trained teacher: `histokd train -w RUN --method ifkd --teacher MODEL_ID`")
        ws = _workspace_of(train, cfg)
        if not ws.model_dir(cfg.teacher).is_dir():
            raise ModelError(f"{ws.model_dir(cfg.teacher)}: teacher model not found; train it first "
                             f"(`histokd train -w {ws.root} --method abmil`) and pass its ID to --teacher")
        classes = list(getattr(train, "classes", None) or _model_classes(ws.model_dir(cfg.teacher), 2))
        tr_ids = [r.slide_id for r in _records(train)]
        tr, fail_tr = load_slides(ws, train, cfg.teacher, cfg.work_mpp, "ifkd: train slides")
        va, _ = load_slides(ws, val, cfg.teacher, cfg.work_mpp, "ifkd: val slides")
        # reporting only (metrics.json): the held-out bags the pipeline hands over, never used for a choice
        te, _ = load_slides(ws, self.held_out, cfg.teacher, cfg.work_mpp, "ifkd: test slides")
        if not tr:
            raise InputError(f"ifkd: no usable training slide ({len(fail_tr)} failed); see the warnings above")
        mil_val = [s.target.copy() for s in va]
        mil_test = [s.target.copy() for s in te]
        res = run_ifkd(tr, va, loop, mil_val)

        # calibration (sigma, threshold) on validation, for the returned net and, for reporting, for
        # the MIL pseudo-masks and each round's student
        pixel: dict[str, Any] = {"validation_score": "val_dice_gt" if any(s.gt is not None for s in va)
                                 else "val_dice_pseudo", "rounds": []}
        s_mil, t_mil, v_mil = calibrate(mil_val, va, mil_val, cfg.sigmas)
        pixel["mil"] = {"sigma": s_mil, "threshold": t_mil, "val": v_mil,
                        "test": _report(mil_test, te, s_mil, t_mil, cfg.work_mpp)}
        for rec, st in zip(res.history, res.round_states, strict=True):
            val_maps = _maps_of(st, cfg, va)
            sg, th, v = calibrate(val_maps, va, mil_val, cfg.sigmas)
            row = {**rec.as_dict(), "sigma": sg, "threshold": th, "val_calibrated": v,
                   "test": _report(_maps_of(st, cfg, te), te, sg, th, cfg.work_mpp)}
            pixel["rounds"].append(row)
        final_val = _maps_of(res.state, cfg, va)
        sigma, thr, vscore = calibrate(final_val, va, mil_val, cfg.sigmas)
        pixel["final"] = {"source": res.source, "sigma": sigma, "threshold": thr, "val": vscore,
                          "test": _report(_maps_of(res.state, cfg, te), te, sigma, thr, cfg.work_mpp)}
        ps = _teacher_patch_size(ws, cfg.teacher, tr_ids)
        meta = {
            "method": "ifkd", "classes": classes, "teacher": cfg.teacher, "work_mpp": cfg.work_mpp,
            "teacher_dir": str(ws.model_dir(cfg.teacher).resolve()),
            "net": cfg.net, "widths": list(cfg.widths), "side_weights": cfg.side_weights, "window": cfg.window,
            "sigma": sigma, "threshold": thr, "patch_size_level0": ps, "source": res.source,
            "config": cfg.model_dump(mode="json"), "pixel_metrics": pixel,
            "history": [r.as_dict() for r in res.history],
        }
        net = build_segnet(cfg.net, cfg.widths, cfg.side_weights)
        net.load_state_dict(res.state)
        _log_summary(pixel)
        return IFKDLabeler(net, meta)


def _teacher_patch_size(ws: Workspace, teacher: str, ids: list[str]) -> float | None:
    for s in ids:
        p = ws.predictions_h5(teacher, s)
        if p.exists():
            return read_prediction_probs(p).patch_size_level0
    return None


def _log_summary(pixel: dict[str, Any]) -> None:
    def d(block: dict[str, Any]) -> str:
        t = block.get("test") or {}
        return f"test dice_mean={t.get('dice_mean', float('nan')):.4f} dice_global={t.get('dice_global', float('nan')):.4f}"

    log.info("ifkd: MIL pseudo-masks %s", d(pixel["mil"]))
    for r in pixel["rounds"]:
        log.info("ifkd: round %d student %s", r["round"], d(r))
    log.info("ifkd: final (%s) %s", pixel["final"]["source"], d(pixel["final"]))


def load_config(path: str | Path) -> IFKDConfig:
    """Read an IFKD config YAML (for scripts)."""
    return validate_config(IFKDConfig, read_yaml(path), str(path))

