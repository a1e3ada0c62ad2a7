"""Generate a synthetic Camelyon16-style cohort: slides, paired multiplex images, masks, labels.

Output folder layout (all paths in ``cohort.csv`` are relative to it)::

    OUT/cohort.csv                   slide_id,path,label,split,mask_path,paired_path
    OUT/synth.json                   preset, parameters, seed, slide count
    OUT/slides/<id>.tiff             H&E, pyramidal tiled JPEG TIFF, RGB uint8
    OUT/paired/<id>.tiff             paired multiplex, pyramidal tiled deflate TIFF, [H, W, 4] uint8
    OUT/masks/<id>.png               tumour mask, uint8 0/255 at MASK_DOWNSAMPLE
    OUT/annotations/<id>.geojson     tumour polygons, level-0 px, QuPath classification "Tumor"
    OUT/meta/<id>.json               per-slide metadata (written last: marks the slide complete)

Each slide is drawn from its own random stream ``default_rng([seed, index])``, so its pixels are the
same whatever the number of worker processes or the order they finish in.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histokd.errors import HistokdError, InputError
from histokd.synth.params import SynthParams, resolve_params
from histokd.workspace import check_id, write_csv, write_json

log = logging.getLogger("histokd")

MASK_DOWNSAMPLE = 16
CSV_COLUMNS = ("slide_id", "path", "label", "split", "mask_path", "paired_path")
SPLIT_FRACTIONS = (("train", 0.5), ("val", 0.25), ("test", 0.25))
POSITIVE, NEGATIVE = "tumour", "normal"

# glibc returns every freed large array to the kernel by default, so each of the ~100 level-0 temporaries
# of a slide is page-faulted and zeroed again: that was ~45 % of the CPU time (system time). Workers keep
# freed memory in their heap instead (measured: system time 4.5 s -> 1.8 s for two 4096² slides).
_WORKER_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 32),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
    "MALLOC_TOP_PAD_": str(1 << 29),
}


@dataclass(frozen=True)
class SlideSpec:
    """What the cohort plan decides for one slide before it is drawn."""

    slide_id: str
    index: int
    label: str
    split: str
    mpp: float
    seed: int

    @property
    def positive(self) -> bool:
        return self.label == POSITIVE


@dataclass
class SynthResult:
    """Outcome of :func:`generate_cohort`: the CSV (None when a slide failed), rows and failures."""

    csv_path: Path | None
    rows: list[dict[str, str]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: int = 0


def n_levels(size: int) -> int:
    """Pyramid depth: halve down to ~256 px, at least 3 levels."""
    return max(3, min(6, int(math.log2(max(size, 1) / 256)) + 1))


def plan_cohort(n: int, seed: int, p: SynthParams, prefix: str = "synth") -> list[SlideSpec]:
    """Labels, stratified splits and native mpp of ``n`` slides.

    Labels are shuffled; within each class the mpps are cycled, so resolution never predicts the label.
    Splits are stratified per class: 50/25/25 % train/val/test (rounded, every split non-empty when the
    class has >= 3 slides).
    """
    if n < 1:
        raise InputError(f"synth: --slides {n}: need at least 1 slide")
    rng = np.random.default_rng([seed, 0x5EED])
    n_pos = round(n * p.positive_fraction)
    if n >= 2:
        n_pos = min(max(n_pos, 1), n - 1)
    labels = np.array([POSITIVE] * n_pos + [NEGATIVE] * (n - n_pos))
    rng.shuffle(labels)
    splits = np.empty(n, dtype=object)
    mpps = np.empty(n, dtype=np.float64)
    for lab in (POSITIVE, NEGATIVE):
        idx = np.flatnonzero(labels == lab)
        mpps[idx] = [p.mpps[k % len(p.mpps)] for k in range(len(idx))]
        order = rng.permutation(idx)
        n_c = len(idx)
        n_val = max(1, round(n_c * SPLIT_FRACTIONS[1][1])) if n_c >= 3 else 0
        n_test = max(1, round(n_c * SPLIT_FRACTIONS[2][1])) if n_c >= 3 else 0
        n_train = n_c - n_val - n_test
        splits[order[:n_train]] = "train"
        splits[order[n_train:n_train + n_val]] = "val"
        splits[order[n_train + n_val:]] = "test"
    width = max(3, len(str(n - 1)))
    return [SlideSpec(f"{prefix}_{i:0{width}d}", i, str(labels[i]), str(splits[i]), float(mpps[i]), seed)
            for i in range(n)]


# knobs added after cohorts were written, with the value that draws exactly what was drawn before them:
# left out of the configuration hash at that value, so such cohorts still resume instead of being redrawn
_NEUTRAL_KNOBS = {"pen_over_tissue": 0.0}


def _config_hash(p: SynthParams, spec: SlideSpec, mask_ds: int) -> str:
    params = {k: v for k, v in p.to_dict().items() if not (k in _NEUTRAL_KNOBS and v == _NEUTRAL_KNOBS[k])}
    blob = json.dumps({"params": params, "spec": asdict(spec), "mask_ds": mask_ds}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _files(spec: SlideSpec) -> dict[str, str]:
    i = spec.slide_id
    return {
        "slide": f"slides/{i}.tiff",
        "paired": f"paired/{i}.tiff",
        "mask": f"masks/{i}.png",
        "geojson": f"annotations/{i}.geojson",
        "meta": f"meta/{i}.json",
    }


def _row(spec: SlideSpec) -> dict[str, str]:
    f = _files(spec)
    return {"slide_id": spec.slide_id, "path": f["slide"], "label": spec.label, "split": spec.split,
            "mask_path": f["mask"], "paired_path": f["paired"]}


def _is_complete(out: Path, spec: SlideSpec, chash: str) -> bool:
    files = _files(spec)
    meta = out / files["meta"]
    if not meta.is_file() or not all((out / v).is_file() for v in files.values()):
        return False
    try:
        return json.loads(meta.read_text()).get("config_hash") == chash
    except (OSError, json.JSONDecodeError):
        return False


def generate_slide(out: str | os.PathLike[str], spec: SlideSpec, params: SynthParams, preset: str,
                   mask_ds: int = MASK_DOWNSAMPLE) -> dict[str, Any]:
    """Draw and write every file of one slide (runs in a worker process). Returns its metadata."""
    import histokd
    from histokd.synth.layout import make_layout
    from histokd.synth.render import PAIRED_CHANNELS, render
    from histokd.synth.tiff import write_pyramid_tiff
    from histokd.synth.truth import mask_polygons, write_geojson, write_mask_png

    out = Path(out)
    files = _files(spec)
    rng = np.random.default_rng([spec.seed, spec.index])
    lay = make_layout(params, spec.mpp, spec.positive, rng)
    drawn = render(params, lay, rng)
    levels = n_levels(params.size)
    desc = f"histokd synthetic H&E slide {spec.slide_id}; mpp={spec.mpp}"
    write_pyramid_tiff(out / files["slide"], drawn.rgb, spec.mpp, n_levels=levels, tile=256,
                       compression="jpeg", quality=90, description=desc)
    del drawn.rgb
    write_pyramid_tiff(out / files["paired"], drawn.paired, spec.mpp, n_levels=levels, tile=256,
                       compression="zlib",
                       description=json.dumps({"histokd_paired": True, "channels": list(PAIRED_CHANNELS)}))
    del drawn.paired
    mask = lay.tumour_mask(mask_ds)
    write_mask_png(out / files["mask"], mask)
    write_geojson(out / files["geojson"], mask_polygons(mask, mask_ds), {"slide_id": spec.slide_id})
    tissue = lay.tissue_mask(mask_ds)
    ink = lay.ink_mask(mask_ds)
    st = lay.stain
    meta: dict[str, Any] = {
        "slide_id": spec.slide_id,
        "label": spec.label,
        "split": spec.split,
        "mpp": spec.mpp,
        "size": [params.size, params.size],
        "level_count": levels,
        "seed": [spec.seed, spec.index],
        "preset": preset,
        "params": params.to_dict(),
        "mask_downsample": mask_ds,
        "mask_shape": list(mask.shape),
        "tissue_fraction_of_slide": float(tissue.mean()),
        "clean_tissue_fraction_of_slide": float((tissue & ~ink).mean()),
        "ink_fraction_of_slide": float(ink.mean()),
        "ink_over_tissue_fraction": float((tissue & ink).sum() / max(1, tissue.sum())),
        "tumour_fraction": float(mask.sum() / max(1, tissue.sum())),
        "lesions": [{**_blob_meta(b, spec.mpp), "grade": "subtle" if b.kind == "subtle" else "main"}
                    for b in lay.lesions],
        "lymph_regions": [_blob_meta(b, spec.mpp) for b in lay.lymph],
        "lookalike_regions": [_blob_meta(b, spec.mpp) for b in lay.lookalikes],
        "confounders": {
            "pen": None if lay.pen is None else {"colour": lay.pen.colour, "width_px": lay.pen.width,
                                                 "opacity": lay.pen.opacity,
                                                 "points": [list(q) for q in lay.pen.points]},
            "pen_over_tissue": [{"colour": q.colour, "width_px": q.width, "opacity": q.opacity,
                                 "points": [list(x) for x in q.points]} for q in lay.ink],
            "fold": None if lay.fold is None else asdict(lay.fold),
            "blur": [_blob_meta(b, spec.mpp) for b in lay.blurs],
            "blur_sigma_um": drawn.blur_sigma_um,
        },
        "stain": None if st is None else asdict(st),
        "nuclei": drawn.nuclei,
        "paired_channels": list(PAIRED_CHANNELS),
        "files": {k: v for k, v in files.items() if k != "meta"},
        "histokd_version": histokd.__version__,
        "config_hash": _config_hash(params, spec, mask_ds),
    }
    write_json(out / files["meta"], meta)  # last: its presence marks the slide complete
    return meta


def _blob_meta(b: Any, mpp: float) -> dict[str, Any]:
    return {"centre_x": round(b.cx, 1), "centre_y": round(b.cy, 1), "radius_px": round(b.radius, 1),
            "radius_um": round(b.radius * mpp, 1), "max_radius_px": round(b.max_radius, 1),
            "shape_amps": list(b.amps), "shape_phases": list(b.phases)}


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    return write_csv(path, list(CSV_COLUMNS), ([r.get(c, "") for c in CSV_COLUMNS] for r in rows))


def generate_cohort(
    out: str | os.PathLike[str],
    slides: int = 16,
    seed: int = 0,
    preset: str | SynthParams = "easy",
    size: int | None = None,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    mask_downsample: int = MASK_DOWNSAMPLE,
    overrides: Mapping[str, Any] | None = None,
    prefix: str = "synth",
    show_progress: bool | None = None,
) -> SynthResult:
    """Generate a cohort; keeps going when a slide fails and reports the failures (no CSV then).

    Slides whose files exist and whose metadata matches this configuration are kept (resume)
    unless ``overwrite``. See :func:`synth` for the arguments.
    """
    from histokd.progress import progress

    params = resolve_params(preset, overrides, size=size)
    preset_name = preset if isinstance(preset, str) else "custom"
    if mask_downsample < 1 or params.size % mask_downsample:
        raise InputError(f"synth: size {params.size} px is not a multiple of mask_downsample "
                         f"{mask_downsample}; pick a size divisible by it (e.g. 4096)")
    check_id(prefix, "slide id prefix")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = plan_cohort(slides, seed, params, prefix)
    todo = [s for s in specs
            if overwrite or not _is_complete(out, s, _config_hash(params, s, mask_downsample))]
    result = SynthResult(None, [_row(s) for s in specs], skipped=len(specs) - len(todo))
    if result.skipped:
        log.info("synth: %d of %d slides already generated with this configuration; kept", result.skipped,
                 len(specs))
    workers = max(1, min(workers or (os.cpu_count() or 1), len(todo) or 1))
    with progress(disable=None if show_progress is None else not show_progress) as bar:
        task = bar.add_task("synth", total=len(todo), unit="slide")
        if workers == 1:
            for s in todo:
                try:
                    generate_slide(out, s, params, preset_name, mask_downsample)
                except Exception as e:  # noqa: BLE001 - a failed slide must not stop the cohort
                    result.failures[s.slide_id] = _describe(e)
                bar.advance(task)
        else:
            # spawn: no inherited threads/locks from the parent (torch, rich) and the same behaviour on
            # every OS; each worker is single-threaded numpy work.
            with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                with _worker_env():  # workers are spawned by the first submits
                    futs = {pool.submit(generate_slide, out, s, params, preset_name, mask_downsample): s
                            for s in todo}
                for fut in cf.as_completed(futs):
                    try:
                        fut.result()
                    except Exception as e:  # noqa: BLE001
                        result.failures[futs[fut].slide_id] = _describe(e)
                    bar.advance(task)
    write_json(out / "synth.json", {"preset": preset_name, "params": params.to_dict(), "seed": seed,
                                    "slides": slides, "mask_downsample": mask_downsample,
                                    "csv_columns": list(CSV_COLUMNS)})
    if not result.failures:
        result.csv_path = _write_csv(out / "cohort.csv", result.rows)
    return result


@contextlib.contextmanager
def _worker_env() -> Iterator[None]:
    """Set the malloc tuning above for worker processes spawned inside the block (parent env restored)."""
    saved = {k: os.environ.get(k) for k in _WORKER_MALLOC_ENV}
    for k, v in _WORKER_MALLOC_ENV.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def _describe(e: BaseException) -> str:
    if isinstance(e, HistokdError):
        return str(e)
    return f"{type(e).__name__}: {e}; check free disk space and permissions of the output folder, then re-run"


def synth(
    out: str | os.PathLike[str],
    slides: int = 16,
    seed: int = 0,
    preset: str | SynthParams = "easy",
    size: int | None = None,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    mask_downsample: int = MASK_DOWNSAMPLE,
    overrides: Mapping[str, Any] | None = None,
    prefix: str = "synth",
    show_progress: bool | None = None,
) -> Path:
    """Generate a synthetic cohort in ``out`` and return the path of its ``cohort.csv``.

    Args:
        out: output folder (created).
        slides: number of slides; about ``positive_fraction`` of them carry tumour.
        seed: cohort seed; the same seed gives the same pixels whatever ``workers``.
        preset: ``easy`` | ``camelyon`` | ``hard`` or a :class:`SynthParams`.
        size: level-0 side in px (default: the preset's, 4096); must be a multiple of ``mask_downsample``.
        workers: worker processes (default: all CPUs, at most one per slide).
        overwrite: redraw slides that already exist with the same configuration.
        mask_downsample: level-0 px per tumour-mask px.
        overrides: :class:`SynthParams` fields to change, e.g. ``{"lesion_count": (1, 1), "atypia": 0.3}``.
        prefix: slide ids are ``<prefix>_000``, ...
        show_progress: force the progress bar on/off (default: on unless ``HISTOKD_NO_PROGRESS``).

    Raises:
        InputError: bad parameters. HistokdError: some slides failed (the others are written).
    """
    res = generate_cohort(out, slides, seed, preset, size, workers=workers, overwrite=overwrite,
                          mask_downsample=mask_downsample, overrides=overrides, prefix=prefix,
                          show_progress=show_progress)
    if res.failures:
        first = next(iter(res.failures.items()))
        raise HistokdError(f"synth {out}: {len(res.failures)} of {slides} slides failed (first: {first[0]}: "
                           f"{first[1]}); fix the cause and re-run, finished slides are kept")
    assert res.csv_path is not None
    return res.csv_path
