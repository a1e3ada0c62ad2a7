"""Side-by-side training: E independent MIL models trained as one stacked model on packed bags.

:func:`fit_side_by_side` trains the models of a ``bench`` run's folds and repeats (or any models of one
architecture, each on its own data) together: one :class:`~histokd.engine.packed.StackedMIL`, one
optimiser step per step for all of them. Member e keeps everything it would have alone:

- its own training bags, in the order the single-model loop would draw them (a ``RandomSampler`` on a
  generator seeded with its seed), with its own per-epoch subsampling (:class:`TrainView`);
- its own class weights, loss (the mean over its bags), learning-rate schedule and step count;
- its own optimiser state (:class:`StackedOptimizer`: Adam / AdamW / SGD are element-wise, so the
  stacked update is E independent updates; gradient clipping takes each member's own norm), and a member
  with no bag in a step (its epoch is shorter, or it has stopped) is not stepped;
- its own validation, early stopping and best-epoch checkpoint.

What differs from training the models one after another is only the random dropout draws (one stream for
the stack). Without dropout, members equal their single-model runs up to float rounding
(``tests/engine/test_side_by_side.py``). Bags are packed, not padded (:mod:`histokd.engine.packed`), so a
step's cost follows its real instance count. ``precision="bf16-mixed"`` (and ``auto`` on a CPU with native bf16, :func:`resolve_stack_precision`) runs the
matrix products in bfloat16 (autocast; fp32 weights, optimiser state, softmax and pooling).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.optim.adam import adam as adam_update
from torch.optim.sgd import sgd as sgd_update
from torch.utils.data import RandomSampler

from histokd.data.bags import BagDataset
from histokd.engine.config import TrainerConfig
from histokd.engine.epochs import EarlyStopping
from histokd.engine.fabric import seed_everything
from histokd.engine.runtime import autocast, native_bf16, resolve_precision, torch_threads
from histokd.engine.loop import (
    FitResult,
    TrainView,
    class_weights,
    cpu_threads,
    labelled_bags,
    lr_factor,
    validation_score,
)
from histokd.engine.packed import StackedMIL
from histokd.models.base import MILModel
from histokd.progress import progress

log = logging.getLogger("histokd")

#: rows of one member in one packed prediction chunk (validation, scoring)
PREDICT_ROWS = 65_536


class StackedOptimizer:
    """Adam / AdamW / SGD (TrainerConfig's) over parameters with a leading member axis [E, ...]. Member e's
    slice of every parameter is its own tensor to torch's optimiser functions (fused kernels where torch has
    them), with its own state and step count; a member not stepped is left out of the call, so its weights
    and state do not move. Learning-rate schedules are per member (its own steps per epoch)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], cfg: TrainerConfig, n_members: int,
                 steps_per_epoch: Sequence[int]) -> None:
        self.params, self.cfg, self.E = list(params), cfg, n_members
        self.spe = [max(1, int(s)) for s in steps_per_epoch]
        self.t = [0] * n_members
        self.fused = cfg.optimizer != "sgd"
        # per member: its slices of the parameters and of the optimiser state
        self.slices = [[p[e] for p in self.params] for e in range(n_members)]
        if cfg.optimizer == "sgd":
            self.buffers: list[list[torch.Tensor | None]] = [[None] * len(self.params) for _ in range(n_members)]
        else:
            self.m = [torch.zeros_like(p) for p in self.params]
            self.v = [torch.zeros_like(p) for p in self.params]
            self.steps = [[torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]
                          for _ in range(n_members)]
            # while every member has stepped every time, one call on the whole stacked tensors is the same
            # update (element-wise, equal step counts) at a tenth of the calls; ``steps`` catches up on leaving
            self.uniform = True
            self.shared_steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _clip(self) -> None:
        """Each member's gradient scaled to norm ``grad_clip`` at most (its own norm)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        norm2 = sum(g.float().pow(2).reshape(self.E, -1).sum(1) for g in grads)
        coef = (self.cfg.grad_clip / (torch.sqrt(norm2) + 1e-6)).clamp(max=1.0)  # type: ignore[operator,arg-type]
        for g in grads:
            g.mul_(coef.reshape(self.E, *([1] * (g.dim() - 1))))

    @torch.no_grad()
    def step(self, active: Sequence[bool]) -> None:
        members = [e for e in range(self.E) if active[e]]
        if not members or any(p.grad is None for p in self.params):
            return
        if self.cfg.grad_clip:
            self._clip()
        by_lr: dict[float, list[int]] = {}
        for e in members:  # members at the same learning rate go through one call
            by_lr.setdefault(self.cfg.lr * lr_factor(self.t[e], self.cfg, self.spe[e]), []).append(e)
            self.t[e] += 1
        for lr, group in by_lr.items():
            self._update(group, lr)

    def _update(self, group: list[int], lr: float) -> None:
        cfg = self.cfg
        ps = [t for e in group for t in self.slices[e]]
        gs = [p.grad[e] for e in group for p in self.params]  # type: ignore[index]
        if cfg.optimizer == "sgd":
            bufs = [b for e in group for b in self.buffers[e]]
            sgd_update(ps, gs, bufs, weight_decay=cfg.weight_decay, momentum=cfg.momentum, lr=lr,
                                dampening=0.0, nesterov=False, maximize=False)
            k = 0
            for e in group:  # sgd creates the momentum buffers at the first step
                for j in range(len(self.params)):
                    self.buffers[e][j] = bufs[k]
                    k += 1
            return
        if self.uniform and len(group) == self.E:
            adam_update(self.params, [p.grad for p in self.params], self.m, self.v, [], self.shared_steps,  # type: ignore[misc]
                        fused=self.fused, decoupled_weight_decay=cfg.optimizer == "adamw", amsgrad=False,
                        beta1=cfg.betas[0], beta2=cfg.betas[1], lr=lr, weight_decay=cfg.weight_decay, eps=1e-8,
                        maximize=False)
            return
        if self.uniform:  # the first step without every member: each member's count is the shared one
            self.uniform = False
            for e in range(self.E):
                for own, shared in zip(self.steps[e], self.shared_steps):
                    own.copy_(shared)
        ms = [m[e] for e in group for m in self.m]
        vs = [v[e] for e in group for v in self.v]
        steps = [t for e in group for t in self.steps[e]]
        adam_update(ps, gs, ms, vs, [], steps, fused=self.fused,
                              decoupled_weight_decay=cfg.optimizer == "adamw", amsgrad=False,
                              beta1=cfg.betas[0], beta2=cfg.betas[1], lr=lr, weight_decay=cfg.weight_decay,
                              eps=1e-8, maximize=False)


class _Member:
    """One model's data and bookkeeping in a side-by-side fit."""

    def __init__(self, train: BagDataset, val: BagDataset | None, cfg: TrainerConfig, seed: int) -> None:
        self.view = TrainView(train, cfg.max_instances, seed, cfg.instance_dropout)
        in_memory = all(r.features is not None for r in train.records)
        cap = cfg.max_instances
        self.cached = None
        if in_memory and cfg.instance_dropout <= 0 and (cap is None or int(train.sizes.max()) <= cap):
            self.cached = [train[i].features for i in range(len(train))]  # nothing is redrawn: read once
        self.labels = np.asarray(train.labels)
        self.weight = class_weights(self.labels, train.n_classes, cfg.class_weights)
        self.val = val if val is not None and len(val) else None
        self.gen = torch.Generator()
        self.gen.manual_seed(seed)  # the single-model loop's loader generator: the same bag order
        self.stopper = EarlyStopping("max", cfg.patience, cfg.min_epochs)
        self.history: list[dict[str, Any]] = []
        self.running = True

    def bag(self, i: int) -> torch.Tensor:
        return self.cached[i] if self.cached is not None else self.view[i].features

    def batches(self, batch_size: int) -> list[list[int]]:
        # a DataLoader draws its workers' base seed from the generator before the sampler's permutation
        torch.empty((), dtype=torch.int64).random_(generator=self.gen)
        order = list(RandomSampler(range(len(self.labels)), generator=self.gen))
        return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


#: a step is packed *ragged* (each member's layers on its own rows, no padding) when padding every member to
#: the largest member's row count would cost more than this factor in rows, and the step has this many rows
RAGGED_WASTE, RAGGED_MIN_ROWS = 1.5, 2048


def bucket_rows(n: int) -> int:
    """``n`` rounded up to a size with three significant bits (16, 20, 24, 28, 32, 40, 48, ...): less than 25 %
    more rows, and four sizes per octave. bf16 matrix products on a CPU run through oneDNN, which
    builds a kernel for every new shape; packed rows of many sizes would build one almost every step."""
    if n <= 16:
        return 16
    top = 1 << (n.bit_length() - 3)  # the weight of the third bit from the top
    return -(-n // top) * top


def pack(per_member: Sequence[Sequence[torch.Tensor]], n_bags: int, dim: int,
         device: torch.device | str = "cpu", bucket: bool = False, dtype: torch.dtype = torch.float32
         ) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | list[torch.Tensor]]:
    """Each member's bags [n_i, D] -> ``x`` [E, T, D] and ``seg`` [E, T] (bag slot; ``n_bags`` on padding rows),
    T the largest member's row count; or ragged (lists of each member's rows and slots, no padding) when the
    padding would be large (:data:`RAGGED_WASTE`). :class:`StackedMIL` takes either. ``bucket``: row counts
    (T, or each ragged member's) padded up to :func:`bucket_rows`, padding rows in slot ``n_bags``. ``dtype``:
    of ``x`` (bfloat16 under bf16 autocast, where the first product would cast it anyway)."""
    E = len(per_member)
    rows = [sum(len(b) for b in bags) for bags in per_member]
    T = max(1, max(rows))
    slots = [torch.repeat_interleave(torch.arange(len(bags)), torch.tensor([len(b) for b in bags], dtype=torch.long))
             if bags else torch.zeros(0, dtype=torch.long) for bags in per_member]
    if sum(rows) >= RAGGED_MIN_ROWS and E * T > RAGGED_WASTE * sum(rows):
        xs, segs = [], []
        for bags, r, sl in zip(per_member, rows, slots):
            n = bucket_rows(r) if bucket else r
            x = torch.zeros(n, dim, dtype=dtype)
            if bags:
                x[:r] = torch.cat(list(bags)) if len(bags) > 1 else bags[0]
            seg = torch.full((n,), n_bags, dtype=torch.long)
            seg[:r] = sl
            xs.append(x.to(device))
            segs.append(seg.to(device))
        return xs, segs
    T = bucket_rows(T) if bucket else T
    x = torch.zeros(E, T, dim, dtype=dtype)
    seg = torch.full((E, T), n_bags, dtype=torch.long)
    for e, bags in enumerate(per_member):
        if bags:
            x[e, :rows[e]] = torch.cat(list(bags)) if len(bags) > 1 else bags[0]
            seg[e, :rows[e]] = slots[e]
    return x.to(device), seg.to(device)


def member_losses(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each member's class-weighted cross-entropy over its bags (``y`` -1: no bag in that slot) -> [E]
    (torch's weighted mean: sum of w_y · nll over the sum of w_y)."""
    logp = torch.log_softmax(logits.float(), -1)
    valid = y >= 0
    yy = y.clamp_min(0)
    nll = -logp.gather(-1, yy.unsqueeze(-1)).squeeze(-1)
    w = weight.gather(1, yy) * valid
    return (w * nll).sum(1) / w.sum(1).clamp_min(1e-12)


def _packing(precision: str) -> dict[str, Any]:
    """:func:`pack`'s options for a precision: bf16 rows in bucketed sizes (oneDNN's kernels), fp32 as they are."""
    return {"bucket": True, "dtype": torch.bfloat16} if precision == "bf16-mixed" else {}


def _autocast(precision: str, device: torch.device) -> Any:
    return autocast(precision, device.type)


@torch.no_grad()
def stacked_bag_probs(stacked: StackedMIL, bags: Sequence[Sequence[torch.Tensor] | None],
                      device: torch.device | str = "cpu", precision: str = "32-true") -> list[np.ndarray]:
    """Every member's bag probabilities [n_e, C] on its own bags (``bags[e]``: features [N, D] each; ``None``:
    none) in eval mode, with every instance, packed in chunks."""
    stacked.eval()
    dev = torch.device(device)
    bags_of = [list(b) if b is not None else [] for b in bags]
    out: list[list[np.ndarray]] = [[] for _ in bags_of]
    cursor = [0] * len(bags_of)
    while any(c < len(b) for c, b in zip(cursor, bags_of)):
        chunk = []
        for e, bags in enumerate(bags_of):
            take, rows = [], 0
            while cursor[e] < len(bags) and (not take or rows + len(bags[cursor[e]]) <= PREDICT_ROWS):
                take.append(bags[cursor[e]])
                rows += len(bags[cursor[e]])
                cursor[e] += 1
            chunk.append(take)
        n = max(len(c) for c in chunk)
        x, seg = pack(chunk, n, stacked.models[0].in_dim, dev, **_packing(precision))
        with _autocast(precision, dev):
            logits = stacked(x, seg, n)
        probs = torch.softmax(logits.float(), -1).cpu().numpy()
        for e, take in enumerate(chunk):
            out[e].append(probs[e, :len(take)])
    C = stacked.n_classes
    return [np.concatenate(o) if o else np.zeros((0, C), np.float32) for o in out]


def resolve_device(cfg: TrainerConfig) -> torch.device:
    """The one device of a side-by-side fit: ``cpu``, or CUDA when asked (``cuda``) or available (``auto``)."""
    if cfg.accelerator == "cpu" or (cfg.accelerator == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def resolve_stack_precision(cfg: TrainerConfig, device: torch.device) -> str:
    """``32-true`` or ``bf16-mixed`` (:func:`histokd.engine.runtime.resolve_precision`): ``auto`` is bf16-mixed on
    a CUDA GPU with bf16 and on a CPU with native bf16 (:func:`native_bf16`); ``bf16-mixed`` is honoured
    everywhere (autocast); anything else runs in fp32."""
    cpu_auto = "bf16-mixed" if native_bf16() else "32-true"
    return "bf16-mixed" if resolve_precision(cfg.precision, device.type, cpu_auto) in ("bf16-mixed", "bf16") else "32-true"


def _validate(stacked: StackedMIL, members: list[_Member], val_bags: list[list[torch.Tensor] | None],
              device: torch.device, precision: str) -> list[dict[str, float] | None]:
    """Each running member's validation loss / AUC / accuracy (``None``: no validation or stopped)."""
    from histokd.evaluate.metrics import bag_metrics

    todo = [vb if (vb is not None and mb.running) else None for vb, mb in zip(val_bags, members)]
    probs = stacked_bag_probs(stacked, todo, device, precision)
    out: list[dict[str, float] | None] = []
    for mb, vb, p in zip(members, todo, probs):
        if vb is None:
            out.append(None)
            continue
        y = np.asarray(mb.val.labels)  # type: ignore[union-attr]
        nll = -np.log(np.clip(p[np.arange(len(y)), np.maximum(y, 0)], 1e-12, None))
        m = bag_metrics(y, p, mb.val.positive_index)  # type: ignore[union-attr]
        out.append({"val_loss": float(np.mean(nll[y >= 0])) if (y >= 0).any() else float("nan"),
                    "val_auc": m["auc"], "val_accuracy": m["accuracy"]})
    return out


def _train_epoch(stacked: StackedMIL, opt: StackedOptimizer, members: list[_Member], weights: torch.Tensor,
                 cfg: TrainerConfig, epoch: int, device: torch.device, precision: str) -> list[tuple[float, int]]:
    """One epoch of every running member: packed steps of ``batch_size`` bags each -> (loss sum, bags) per member."""
    B = cfg.batch_size
    plans = []
    for mb in members:
        mb.view.set_epoch(epoch)
        plans.append(mb.batches(B) if mb.running else [])
    stacked.train()
    sums = [[0.0, 0] for _ in members]
    dim = stacked.models[0].in_dim
    for k in range(max(len(p) for p in plans)):
        step_bags = [[mb.bag(i) for i in p[k]] if k < len(p) else [] for mb, p in zip(members, plans)]
        y = torch.full((len(members), B), -1, dtype=torch.long)
        for e, (mb, p) in enumerate(zip(members, plans)):
            if k < len(p):
                y[e, :len(p[k])] = torch.from_numpy(mb.labels[p[k]])
        x, seg = pack(step_bags, B, dim, device, **_packing(precision))
        with _autocast(precision, device):
            logits = stacked(x, seg, B)
        losses = member_losses(logits, y.to(device), weights)
        opt.zero_grad()
        losses.sum().backward()
        opt.step([bool(b) for b in step_bags])
        for e, lv in enumerate(losses.detach().cpu().tolist()):
            n = len(step_bags[e])
            if n:
                sums[e][0] += lv * n
                sums[e][1] += n
    return [(s, int(n)) for s, n in sums]


def fit_side_by_side(models: Sequence[MILModel], trains: Sequence[BagDataset], vals: Sequence[BagDataset | None],
                     cfg: TrainerConfig, seeds: Sequence[int], stage: str = "train") -> list[FitResult]:
    """Train ``models[e]`` on ``trains[e]`` (checkpoint and early stopping on ``vals[e]``) side by side, as one
    stacked model (module docstring); every model comes back on CPU, eval mode, with its best epoch's weights."""
    device = resolve_device(cfg)
    precision = resolve_stack_precision(cfg, device)
    threads = cpu_threads(cfg, sum(p.numel() for m in models for p in m.parameters()), device.type)
    with torch_threads(threads):
        seed_everything(int(seeds[0]), cfg.deterministic)
        torch.manual_seed(int(seeds[0]))
        members = [_Member(tr, va, cfg, int(s)) for tr, va, s in zip(trains, vals, seeds)]
        stacked = StackedMIL(models).to(device)
        C = models[0].n_classes
        weights = torch.stack([mb.weight if mb.weight is not None else torch.ones(C) for mb in members]).to(device)
        opt = StackedOptimizer(list(stacked.parameters()), cfg, len(members),
                               [math.ceil(len(tr) / cfg.batch_size) for tr in trains])
        val_bags = [None if mb.val is None else [mb.val[i].features for i in range(len(mb.val))] for mb in members]
        best = {k: p.detach().clone() for k, p in stacked.named_parameters()}
        t0 = time.perf_counter()
        with progress() as bar:
            task = bar.add_task(f"{stage} x{len(members)}", total=cfg.max_epochs, unit="epoch")
            for epoch in range(cfg.max_epochs):
                if not any(mb.running for mb in members):
                    break
                sums = _train_epoch(stacked, opt, members, weights, cfg, epoch, device, precision)
                vrec = _validate(stacked, members, val_bags, device, precision)
                _end_epoch(stacked, members, sums, vrec, best, epoch, cfg)
                bar.update(task, advance=1)
        seconds = time.perf_counter() - t0
        for e, mb in enumerate(members):
            if mb.val is not None and mb.stopper.best_epoch >= 0:
                with torch.no_grad():
                    for k, p in stacked.named_parameters():
                        p[e].copy_(best[k][e])
        stacked.cpu().write_back()
    if len(members) == 1:
        mb = members[0]
        best = mb.stopper.best if mb.val is not None and mb.stopper.best_epoch >= 0 else None
        log.info("%s: %d epochs in %.1f s; best epoch %d (validation score %s)%s", stage, len(mb.history), seconds,
                 mb.stopper.best_epoch if best is not None else len(mb.history) - 1, best,
                 "" if precision == "32-true" else f"; {precision}")
    else:
        log.info("%s: %d models side by side, %d epochs at most, in %.1f s", stage, len(members),
                 max(len(mb.history) for mb in members), seconds)
    return [_result(m, mb, cfg, seconds / len(members)) for m, mb in zip(models, members)]


def _end_epoch(stacked: StackedMIL, members: list[_Member], sums: list[tuple[float, int]],
               vrec: list[dict[str, float] | None], best: dict[str, torch.Tensor], epoch: int,
               cfg: TrainerConfig) -> None:
    """History rows, checkpoint slices and early stopping of every member still running."""
    params = dict(stacked.named_parameters())
    for e, mb in enumerate(members):
        if not mb.running:
            continue
        s, n = sums[e]
        row: dict[str, Any] = {"epoch": epoch, "train_loss": s / max(n, 1), "train_bags": n}
        if vrec[e] is not None:
            row.update(vrec[e])  # type: ignore[arg-type]
            if mb.stopper.step(validation_score(vrec[e], cfg.monitor), epoch):  # type: ignore[arg-type]
                with torch.no_grad():
                    for k, p in params.items():
                        best[k][e].copy_(p[e])
            if mb.stopper.should_stop(epoch):
                mb.running = False
        mb.history.append(row)
        if len(members) == 1:
            log.info("epoch %d %s", epoch, " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))


def _result(model: MILModel, mb: _Member, cfg: TrainerConfig, seconds: float) -> FitResult:
    model = model.cpu().eval()
    model.after_fit(labelled_bags(mb.view.ds), mb.view.ds.positive_index)
    use_val = mb.val is not None and mb.stopper.best_epoch >= 0
    best_epoch = mb.stopper.best_epoch if use_val else len(mb.history) - 1
    best = mb.history[best_epoch][f"val_{cfg.monitor}"] if use_val else float("nan")
    log.debug("member: %d epochs; best epoch %d (validation %s)", len(mb.history), best_epoch, best)
    return FitResult(model, mb.history, best_epoch, float(best), seconds)
