"""``histokd demo`` / ``histokd.demo(...)``: the whole pipeline on the built-in synthetic cohort, then
the report.

synth -> tile -> embed (default encoder) -> train a distillation method (WENO by default) -> label ->
report. Each stage is resumable, so re-running the demo after an interruption picks up where it stopped.
Budget: 2 CPU cores, at most 10 minutes and 4 GB of memory (measured figures in README.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from histokd.workspace import ModelFiles, Workspace

log = logging.getLogger("histokd")


@dataclass
class DemoResult:
    workspace: Path
    model_id: str
    report: Path
    timings: dict[str, float] = field(default_factory=dict)


def demo(
    out: str | Path = "demo_run",
    slides: int = 32,
    seed: int = 0,
    preset: str = "camelyon",
    encoder: str = "efficientnet_lite0",
    method: str = "weno",
    workers: int = 2,
) -> DemoResult:
    """Run the pipeline end to end in ``out`` and return where the report is.

    ``out/cohort/`` holds the synthetic slides, ``out/run/`` the workspace (tiles, features, models,
    predictions, reports).
    """
    from histokd.pipeline.embed import embed
    from histokd.pipeline.label import label
    from histokd.pipeline.report import report
    from histokd.pipeline.tile import tile
    from histokd.pipeline.train import train
    from histokd.synth.generate import synth

    out = Path(out)
    cohort_dir = out / "cohort"
    ws = out / "run"
    timings: dict[str, float] = {}

    def stage(name: str, fn, *args, **kwargs):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        log.info("demo: %s ...", name)
        result = fn(*args, **kwargs)
        timings[name] = time.perf_counter() - t0
        log.info("demo: %s done in %.1f s", name, timings[name])
        return result

    cohort_csv = cohort_dir / "cohort.csv"
    if not cohort_csv.exists():
        cohort_csv = stage("synth", synth, cohort_dir, slides=slides, seed=seed, preset=preset, workers=workers)
    stage("tile", tile, cohort_csv, ws, mpp=0.5, size=224, workers=workers)
    stage("embed", embed, ws, encoder=encoder, workers=workers)
    model_id = f"{method}-demo"
    if _model_complete(Workspace(ws).model_files(model_id)):
        log.info("demo: model %s already trained; skipped", model_id)
    else:
        stage("train", train, ws, features=encoder, method=method, seed=seed, model_id=model_id, overwrite=True)
    stage("label", label, ws, model=model_id)
    index = stage("report", report, ws, model_id)
    return DemoResult(workspace=ws, model_id=model_id, report=Path(index), timings=timings)


def _model_complete(files: ModelFiles) -> bool:
    """A model folder is complete when its weights, config, metrics and bundle are all there (train writes the
    bundle last; a model from before bundles is retrained, so that `histokd predict` can use it)."""
    return all(p.exists() for p in (files.weights, files.config, files.metrics, files.bundle))
