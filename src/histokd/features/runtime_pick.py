"""Which graph runtime is faster on this machine: measured once per (graph, CPU, threads, versions), then cached.

On CPU both OpenVINO and ONNX Runtime run an encoder's exported graph with the same features, but which one
is faster depends on the processor: for EfficientNet-Lite0 at batch 64 and 2 threads, OpenVINO ran at
about 300 tiles/s and ONNX Runtime at 260 on a 2-core AMD EPYC (AVX-512), and the order was the other way
round on a 2-core Intel Xeon (about 245 against 265). So ``runtime="auto"`` times both on a few batches of
fixed random tiles the first time a graph meets a machine (about a second, logged with both rates) and
keeps the answer in ``<cache dir>/runtime-choice.json`` under a key of the graph's key, the CPU model, the
number of logical CPUs, the thread count and both runtimes' versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from histokd.workspace import write_json

log = logging.getLogger("histokd")

FILE_NAME = "runtime-choice.json"
#: tiles per timed batch, timed batches per runtime (the best is kept), after one warm-up batch
BATCH, REPEATS = 32, 3


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def choice_key(graph_key: str, threads: int, versions: Mapping[str, str | None]) -> str:
    ident = json.dumps({"graph": graph_key, "cpu": cpu_model(), "cpus": os.cpu_count(), "threads": threads,
                        "versions": dict(sorted(versions.items()))}, sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def tiles_per_s(runner: Callable[[torch.Tensor], object], size: int) -> float:
    """The best of :data:`REPEATS` timed batches of :data:`BATCH` fixed random uint8 tiles, after a warm-up."""
    g = torch.Generator().manual_seed(3)
    tiles = torch.randint(0, 256, (BATCH, 3, size, size), dtype=torch.uint8, generator=g)
    runner(tiles[:8])
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        runner(tiles)
        best = min(best, time.perf_counter() - t0)
    return BATCH / max(best, 1e-9)


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # none yet, or damaged: measure again
        return {}


def pick_faster(runners: Mapping[str, Callable[[torch.Tensor], object]], size: int, key: str, cache: Path) -> str:
    """The name of the faster of ``runners`` here: from ``cache / FILE_NAME`` when this ``key`` was measured,
    else measured now and recorded (atomically; a cache that cannot be written only costs a re-measure)."""
    path = cache / FILE_NAME
    data = _load(path)
    known = data.get(key)
    if isinstance(known, dict) and known.get("runtime") in runners:
        return str(known["runtime"])
    rates = {name: tiles_per_s(run, size) for name, run in runners.items()}
    best = max(rates, key=rates.__getitem__)
    log.info("runtime auto: %s is the faster here (%s tiles/s on %s; measured once, cached in %s)", best,
             ", ".join(f"{n} {r:.0f}" for n, r in rates.items()), cpu_model(), path)
    data[key] = {"runtime": best, "tiles_per_s": {n: round(r, 1) for n, r in rates.items()}, "cpu": cpu_model(),
                 "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        write_json(path, data)
    except OSError as e:  # a read-only cache only costs a re-measure next time
        log.debug("runtime choice not cached (%s)", e)
    return best
