"""The MIL training loop on Lightning Fabric, and whole-bag prediction.

:func:`fit_mil` trains any :class:`~histokd.models.base.MILModel` on a :class:`BagDataset`: batches of
padded bags, class-weighted loss (``model.bag_loss`` + ``model.loss_extra``), a per-epoch random
subsample of bags larger than ``max_instances`` (training only: prediction always uses every tile),
early stopping and checkpoint choice on the *validation* split (the test split never enters), seeded
and deterministic, CPU / GPU / multi-device DDP through Fabric, mixed precision on GPU.
Its early stopping is :mod:`histokd.engine.epochs`'s :class:`EarlyStopping`, the one every method's stages
use through :func:`~histokd.engine.epochs.fit_epochs` (WENO, the Distill-to-Label student, IFKD rounds,
More From Less); both loops end a stage with the same log line (``<stage>: <n> epochs in <s> s; best epoch
...``). Pieces for other loops: :class:`TrainView`, :func:`bag_loader`, :func:`class_weights`,
:func:`predict_bag`, :func:`evaluate_bags`, :func:`make_optimizer`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from histokd.data.bags import Bag, BagDataset, collate_bags
from histokd.engine.config import TrainerConfig
from histokd.engine.epochs import fit_epochs
from histokd.engine.fabric import make_fabric, resolve_precision, seed_everything
from histokd.engine.runtime import torch_threads
from histokd.models.base import MILModel, MILOutput
from histokd.progress import progress

log = logging.getLogger("histokd")


class TrainView(Dataset):
    """Training view of a :class:`BagDataset`: bags above ``max_instances`` are randomly subsampled, and with
    ``instance_dropout`` p > 0 every bag keeps a random ``ceil((1 - p) * n)`` of its tiles (at least one),
    differently each epoch (:meth:`set_epoch`) but reproducibly (the draw depends on seed, epoch, bag)."""

    def __init__(self, ds: BagDataset, max_instances: int | None, seed: int = 0,
                 instance_dropout: float = 0.0) -> None:
        self.ds, self.max_instances, self.seed, self.epoch = ds, max_instances, seed, 0
        self.instance_dropout = instance_dropout

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Bag:
        bag = self.ds[i]
        n = len(bag.features)
        k = n if self.instance_dropout <= 0 else max(1, math.ceil((1.0 - self.instance_dropout) * n))
        if self.max_instances is not None:
            k = min(k, self.max_instances)
        if k >= n:
            return bag
        rng = np.random.default_rng([self.seed, self.epoch, i])
        keep = np.sort(rng.choice(n, k, replace=False))  # sorted: keeps tile order
        return Bag(bag.features[torch.from_numpy(keep)], bag.label, bag.slide_id,
                   None if bag.coords is None else bag.coords[keep],
                   None if bag.instance_labels is None else bag.instance_labels[keep], bag.split)


def bag_loader(ds: BagDataset | TrainView, batch_size: int, shuffle: bool, seed: int = 0,
               num_workers: int = 0) -> DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_bags, generator=g,
                      num_workers=num_workers)


def class_weights(labels: np.ndarray, n_classes: int, mode: str | list[float]) -> torch.Tensor | None:
    """``balanced``: n / (C · count_c) (absent classes get 0), ``none``: None, or explicit weights."""
    if isinstance(mode, list):
        if len(mode) != n_classes:
            from histokd.errors import InputError

            raise InputError(f"train.class_weights has {len(mode)} values for {n_classes} classes")
        return torch.tensor(mode, dtype=torch.float32)
    if mode == "none":
        return None
    counts = np.bincount(labels[labels >= 0], minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def make_optimizer(params: Any, cfg: TrainerConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: TrainerConfig, steps_per_epoch: int) -> float:
    """The learning-rate multiplier at optimiser step ``step`` (0-based): linear warm-up over
    ``warmup_epochs``, then constant or a cosine decay that reaches ``min_lr_ratio`` at ``max_epochs``."""
    spe = max(1, steps_per_epoch)
    warm = cfg.warmup_epochs * spe
    total = max(1, cfg.max_epochs * spe)
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.lr_schedule == "constant":
        return 1.0
    t = min(1.0, (step - warm) / max(1.0, total - warm))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainerConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR | None:
    """Per-step learning-rate multiplier (:func:`lr_factor`; early stopping may end the run sooner).
    ``None`` for a constant rate without warm-up (nothing to schedule)."""
    if cfg.lr_schedule == "constant" and cfg.warmup_epochs <= 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg, steps_per_epoch))


@dataclass
class BagOutput:
    """Whole-bag prediction: ``bag_probs`` [C], ``instance_scores`` [N] or [N, C] (raw evidence),
    ``instance_logits`` [N, C] (each tile as a bag of one, or the model's instance classifier)."""

    bag_probs: np.ndarray
    instance_scores: np.ndarray
    instance_logits: np.ndarray | None = None


@torch.no_grad()
def predict_bag(model: MILModel, features: torch.Tensor | np.ndarray, device: torch.device | str = "cpu",
                instances: bool = True, chunk: int = 4096) -> BagOutput:
    """Predict one bag ``features`` [N, D] with every tile (no cap)."""
    model.eval()
    x = torch.as_tensor(np.asarray(features, dtype=np.float32) if isinstance(features, np.ndarray) else features)
    x = x.to(device, torch.float32).unsqueeze(0)
    out = model(x)
    probs = torch.softmax(out.bag_logits.float(), -1)[0].cpu().numpy()
    scores = out.instance_scores[0].float().cpu().numpy()
    inst = model.instance_logits(x, chunk=chunk)[0].float().cpu().numpy() if instances else None
    return BagOutput(probs, scores, inst)


@torch.no_grad()
def evaluate_bags(model: MILModel, ds: BagDataset, weight: torch.Tensor | None = None,
                  device: torch.device | str = "cpu", autocast: Any = None) -> dict[str, float]:
    """Validation loss (weighted CE of bag logits), AUC (positive class / macro one-vs-rest), accuracy."""
    from histokd.evaluate.metrics import bag_metrics

    model.eval()
    losses, probs, ys = [], [], []
    ctx = autocast if autocast is not None else contextlib.nullcontext
    w = None if weight is None else weight.to(device)
    for i in range(len(ds)):
        b = ds[i]
        with ctx():
            out = model(b.features.to(device).unsqueeze(0))
        y = torch.tensor([b.label], device=device)
        losses.append(float(model.bag_loss(out, y, w)) if b.label >= 0 else float("nan"))
        probs.append(torch.softmax(out.bag_logits.float(), -1)[0].cpu().numpy())
        ys.append(b.label)
    m = bag_metrics(np.array(ys), np.stack(probs), ds.positive_index)
    return {"loss": float(np.nanmean(losses)), "auc": m["auc"], "accuracy": m["accuracy"]}


@dataclass
class FitResult:
    model: MILModel  # on CPU, eval mode, best-epoch weights
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_value: float = float("nan")  # the monitored validation value at best_epoch (NaN without validation)
    seconds: float = 0.0


@contextlib.contextmanager
def log_to_file(path: str | Path | None) -> Iterator[None]:
    """Copy histokd log records to ``path`` (the model's ``train.log``) while the block runs."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    h = logging.FileHandler(path, mode="a", encoding="utf-8")
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("histokd")
    old = root.level
    root.addHandler(h)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(h)
        root.setLevel(old)
        h.close()


def fit_mil(
    model: MILModel,
    train: BagDataset,
    val: BagDataset | None,
    cfg: TrainerConfig,
    seed: int = 0,
    log_path: str | Path | None = None,
    extra_loss: Callable[[MILModel, MILOutput, Any], torch.Tensor | None] | None = None,
    stage: str = "train",
) -> FitResult:
    """Train ``model`` on ``train``; choose the epoch on ``val`` (last epoch when ``val`` is empty/None).

    ``extra_loss(model, out, batch)`` adds a method-specific term (e.g. VAT) to every step; ``stage`` names
    the stage in the log (``<stage>: <n> epochs in ...``).
    Multi-process strategies (``ddp``/``ddp_spawn``) run the loop on every process; the result comes
    from rank 0.
    """
    if packed_path(model, cfg, extra_loss):
        from histokd.engine.side_by_side import fit_side_by_side

        with log_to_file(log_path):
            return fit_side_by_side([model], [train], [val], cfg, [seed], stage=stage)[0]
    fabric = make_fabric(cfg)
    threads = cpu_threads(cfg, sum(p.numel() for p in model.parameters()), fabric.device.type)
    # a partial of a module-level function, so that spawned processes can unpickle it
    run = functools.partial(_fit, model=model, train=train, val=val, cfg=cfg, seed=seed, extra_loss=extra_loss,
                            threads=threads, stage=stage)
    with log_to_file(log_path):
        if "spawn" in cfg.strategy:
            # rank 0's result comes back through a file: Fabric joins the workers *before* reading its
            # return queue, so a return value larger than a pipe buffer (64 KiB: any real state dict)
            # blocks rank 0 in put() forever -- the hang of the first 2-process CPU test
            import tempfile

            with tempfile.TemporaryDirectory(prefix="histokd-spawn-") as tmp:
                out_path = fabric.launch(functools.partial(_fit_portable, run, Path(tmp) / "result.pt"))
                out = torch.load(out_path, map_location="cpu", weights_only=True)
            model.load_state_dict(out.pop("state"))
            res = FitResult(model.cpu().eval(), **out)
        else:
            fabric.launch()  # no-op for one process; `ddp` re-launches the command for the other ranks
            res = run(fabric)
    return res


SMALL_MODEL_PARAMS = 5_000_000


def packed_path(model: MILModel, cfg: TrainerConfig, extra_loss: Any = None) -> bool:
    """True when ``model`` trains on packed bags (:mod:`histokd.engine.side_by_side`): it has a packed form,
    no extra loss term needs the padded batch, packing is not switched off, and one device (no DDP) is used."""
    from histokd.engine.packed import stackable

    one_device = str(cfg.devices) in ("1", "auto") and cfg.num_nodes == 1 and cfg.strategy == "auto"
    return cfg.bag_packing == "auto" and extra_loss is None and one_device and stackable(model) \
        and cfg.accelerator in ("auto", "cpu", "cuda", "gpu")


def validation_score(rec: dict[str, float], monitor: str) -> float:
    """Higher is better: minus the validation loss, or the AUC (minus the loss where the AUC is NaN)."""
    value = -rec["val_loss"] if monitor == "loss" else rec["val_auc"]
    return -rec["val_loss"] if monitor == "auc" and math.isnan(value) else value


def cpu_threads(cfg: TrainerConfig, n_params: int, device_type: str) -> int | None:
    """Torch threads for a fit: ``cfg.cpu_threads``, or with ``auto`` 1 thread below 5 M parameters (MIL
    heads on precomputed features: each step is a few small matrix products, where OpenMP start-up and
    barriers cost more than they save -- 2 threads on a loaded 2-core machine made such steps up to 10x
    slower), else torch's default. ``None`` = leave torch alone (GPU). A side-by-side fit counts the
    parameters of its whole stack."""
    if device_type != "cpu":
        return None
    if cfg.cpu_threads != "auto":
        return int(cfg.cpu_threads)
    return 1 if n_params < SMALL_MODEL_PARAMS else None


def labelled_bags(ds: BagDataset) -> Iterator[tuple[torch.Tensor, int]]:
    """(features [N, D], label) of every labelled bag, each read once (lazy datasets read from disk)."""
    for i in range(len(ds)):
        bag = ds[i]
        if bag.label >= 0:
            yield bag.features, bag.label


def _fit_portable(run: Callable[[Any], FitResult], out_path: Path, fabric: Any) -> str:
    """Worker side of a spawn launch: train, and have rank 0 write its result (tensor state + history) to
    ``out_path``; returns the path (a short string is all that crosses Fabric's return queue)."""
    r = run(fabric)
    if fabric.global_rank == 0:
        torch.save({"state": {k: v.detach().cpu().clone() for k, v in r.model.state_dict().items()},
                    "history": [{k: _plain(v) for k, v in h.items()} for h in r.history],
                    "best_epoch": _plain(r.best_epoch), "best_value": _plain(r.best_value),
                    "seconds": _plain(r.seconds)}, out_path)
    _shutdown_process_group(fabric)
    return str(out_path)


def _shutdown_process_group(fabric: Any) -> None:
    """Leave the gloo group together: a rank exiting while another still tears down its gloo threads
    aborts it ("terminate called without an active exception", SIGABRT), failing the whole launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        fabric.barrier()
        dist.destroy_process_group()


def _plain(v: Any) -> Any:
    """numpy scalars -> Python scalars, so the result file loads with ``weights_only=True``."""
    return v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v


def is_rank_zero() -> bool:
    """False in the extra processes of a multi-process launch (they must not write artefacts)."""
    import os

    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def _fit(fabric: Any, model: MILModel, train: BagDataset, val: BagDataset | None, cfg: TrainerConfig,
         seed: int, extra_loss: Any, threads: int | None = None, stage: str = "train") -> FitResult:
    # threads are set here, in every process (spawned ranks start with torch's default)
    with torch_threads(threads):
        return _fit_loop(fabric, model, train, val, cfg, seed, extra_loss, stage)


class _BagEpoch:
    """One epoch of padded bag batches on ``fabric`` (the ``train_epoch`` hook of :func:`fit_mil`): the
    Fabric set-up of model, optimiser, loader and schedule, then class-weighted bag loss (+ the model's
    extra term + ``extra_loss``), backward, clipping, step."""

    def __init__(self, fabric: Any, model: MILModel, train: BagDataset, cfg: TrainerConfig, seed: int,
                 weight: torch.Tensor | None, extra_loss: Any) -> None:
        self.fabric, self.module, self.cfg, self.extra_loss = fabric, model, cfg, extra_loss
        self.view = TrainView(train, cfg.max_instances, seed, cfg.instance_dropout)
        loader = bag_loader(self.view, cfg.batch_size, shuffle=True, seed=seed, num_workers=cfg.num_workers)
        opt = make_optimizer(model.parameters(), cfg)
        raw_opt = opt
        self.fmodel, self.opt = fabric.setup(model, opt)
        self.loader = fabric.setup_dataloaders(loader, move_to_device=False)
        self.sched = make_scheduler(raw_opt, cfg, len(self.loader))  # after sharding: this rank's steps per epoch
        self.w = None if weight is None else weight.to(fabric.device)

    def __call__(self, epoch: int) -> dict[str, float]:
        fabric, module, cfg = self.fabric, self.module, self.cfg
        self.view.set_epoch(epoch)
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        self.fmodel.train()
        total, n = 0.0, 0
        for batch in self.loader:
            batch = batch.to(fabric.device)
            out = self.fmodel(batch.x, batch.mask)
            loss = module.bag_loss(out, batch.y, self.w)
            extra = module.loss_extra(out, batch.y)
            if extra is not None:
                loss = loss + extra
            if self.extra_loss is not None:
                more = self.extra_loss(module, out, batch)
                if more is not None:
                    loss = loss + more
            self.opt.zero_grad(set_to_none=True)
            fabric.backward(loss)
            if cfg.grad_clip:
                fabric.clip_gradients(self.fmodel, self.opt, max_norm=cfg.grad_clip)
            self.opt.step()
            if self.sched is not None:
                self.sched.step()
            total += float(loss.detach()) * len(batch.y)
            n += len(batch.y)
        if fabric.world_size > 1:  # every rank saw its own shard: the epoch's loss is the mean over all of them
            total, n = (float(v) for v in fabric.all_reduce(torch.tensor([total, float(n)]), reduce_op="sum"))
        return {"train_loss": total / max(n, 1), "train_bags": n}


def _fit_loop(fabric: Any, model: MILModel, train: BagDataset, val: BagDataset | None, cfg: TrainerConfig,
              seed: int, extra_loss: Any, stage: str = "train") -> FitResult:
    """Bag batches on ``fabric`` (:class:`_BagEpoch`) through the engine's epoch loop
    (:func:`~histokd.engine.epochs.fit_epochs`): epochs, early stopping on ``cfg.monitor`` and the
    checkpoint are the engine's, as for every method."""
    seed_everything(seed, cfg.deterministic)
    torch.manual_seed(seed)
    weight = class_weights(train.labels, train.n_classes, cfg.class_weights)
    steps = _BagEpoch(fabric, model, train, cfg, seed, weight, extra_loss)
    use_val = val is not None and len(val) > 0

    def validate(epoch: int) -> dict[str, float]:
        vm = evaluate_bags(model, val, weight, fabric.device, fabric.autocast)  # type: ignore[arg-type]
        return {f"val_{k}": v for k, v in vm.items()}

    def score(rec: dict[str, float]) -> float:
        value = validation_score(rec, cfg.monitor)
        if fabric.world_size > 1:  # rank 0 decides, so no rank can stop (or keep a checkpoint) alone and
            value = float(fabric.broadcast(value, src=0))  # leave the others waiting in a collective forever
        return value

    with progress(disable=None if fabric.global_rank == 0 else True) as bar:
        task = bar.add_task("train", total=cfg.max_epochs, unit="epoch")

        def show(rec: dict[str, float]) -> None:
            log.info("epoch %d %s", rec["epoch"], " ".join(f"{k}={v:.4f}" for k, v in rec.items() if k != "epoch"))
            bar.update(task, advance=1, description=f"train loss {rec['train_loss']:.3f}"
                       + (f" val {cfg.monitor} {rec.get('val_' + cfg.monitor, float('nan')):.3f}" if use_val else ""))

        res = fit_epochs({"model": model}, steps, cfg.max_epochs, validate=validate if use_val else None,
                         score=score, patience=cfg.patience, min_epochs=cfg.min_epochs, stage=stage, on_epoch_end=show,
                         precision=resolve_precision(cfg), autocast_passes=False)  # Fabric autocasts its forward
    model = model.cpu().eval()
    # training bags only (full, not subsampled): e.g. CHOWDER orients its tile scores here
    model.after_fit(labelled_bags(train), train.positive_index)
    # the monitored validation value at the chosen epoch (NaN without validation)
    best = res.history[res.best_epoch][f"val_{cfg.monitor}"] if use_val and res.best_epoch >= 0 else float("nan")
    return FitResult(model, res.history, res.best_epoch, float(best), res.seconds)
