"""``embed --engine ray``: the same extraction spread over a Ray cluster, one actor per GPU (or per few CPUs).

Each actor builds the encoder once and embeds whole slides with :func:`histokd.features.extract.run_jobs`,
the very loop of the local engine, so both engines write identical files. Slides are handed out with an
``ActorPool`` (a slow slide does not hold the others back). The workspace must be on storage that every
node sees (the actors read the slides and write the feature files themselves).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from histokd.errors import InputError
from histokd.features.extract import SlideJob

log = logging.getLogger("histokd")


class _EmbedActor:
    """Holds one encoder; ``embed(job)`` -> (slide_id, n_tiles, error message or "")."""

    def __init__(self, spec: str, weights: str | None, device: str, opts: dict) -> None:
        import torch

        from histokd.features.encoders import build_encoder

        if device == "cuda" and not torch.cuda.is_available():
            device = "cpu"
        from histokd.features.runtime import build_runner

        self.device = device
        self.enc = build_encoder(spec, weights=weights, device=device)
        runtime, threads = opts.pop("runtime", "auto"), opts.pop("threads", None)
        self.runner, self.runtime, _ = build_runner(self.enc, runtime, device, opts.get("precision", "fp32"), threads)
        self.opts = opts

    def embed(self, job: SlideJob) -> tuple[str, int, str]:
        from histokd.features.extract import run_jobs

        try:
            written, failed = run_jobs([job], self.enc, self.runner, device=self.device, runtime=self.runtime,
                                       **self.opts)
        except Exception as e:  # noqa: BLE001 - report, let the other slides go on
            return job.slide_id, len(job.coords), f"{type(e).__name__}: {e}"
        return job.slide_id, len(job.coords), failed.get(job.slide_id, "" if written else "not written")


def run_ray(
    jobs: list[SlideJob],
    spec: str,
    *,
    weights: str | None,
    device: str,
    address: str | None,
    on_tiles: Callable[[int], None] | None = None,
    actors: int | None = None,
    **opts,  # noqa: ANN003 - batch_size, workers, precision, dtype, stain_norm (as run_jobs), runtime, threads
) -> tuple[list[str], dict[str, str]]:
    """Embed ``jobs`` on a Ray cluster. Returns (written slide IDs, failures)."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError as e:
        raise InputError(f"--engine ray: ray is not installed ({e}); pip install 'histokd[ray]'") from e
    if not jobs:
        return [], {}
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    use_gpu = gpus > 0 and device != "cpu"
    cpus_per_actor = 1 + int(opts.get("workers", 0))  # the actor plus its tile-reading workers
    if actors is None:
        actors = gpus if use_gpu else max(1, int(res.get("CPU", 1)) // cpus_per_actor)
    actors = max(1, min(actors, len(jobs)))
    remote = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=min(cpus_per_actor, int(res.get("CPU", 1))))(_EmbedActor)
    handles = [remote.remote(spec, weights, "cuda" if use_gpu else "cpu", opts) for _ in range(actors)]
    pool = ActorPool(handles)
    log.info("ray: %d actor(s) on %s over %d slide(s)", actors, "GPU" if use_gpu else "CPU", len(jobs))
    written: list[str] = []
    failed: dict[str, str] = {}
    try:
        for sid, n, err in pool.map_unordered(lambda a, job: a.embed.remote(job), jobs):
            if err:
                failed[sid] = err
            else:
                written.append(sid)
            if on_tiles:
                on_tiles(n)
    finally:
        for a in handles:  # release the actors' CPUs/GPUs for the next call
            ray.kill(a)
    return written, failed
