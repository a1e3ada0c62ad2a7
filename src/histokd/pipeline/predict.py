"""``histokd predict`` / ``histokd.predict(...)``: a trained model bundle on new slides, labelled or not.

tile -> embed -> label -> report, each with the bundle's own settings (``bundle.json``: tiling, encoder,
precision, stain normalisation; :mod:`histokd.pipeline.bundle`), composed from the stages' own functions, so
it resumes and keeps going past a bad slide as they do. The slides are file paths, a folder (its slide
files, not recursive) or a cohort CSV whose ``label`` column is optional. The model (a folder or a
``.tar.gz`` from ``histokd export-model``) is installed into ``OUT/models/<id>/`` (portable files only).

Beside the stages' outputs it writes ``OUT/predictions/<id>/slides.csv`` (per slide: the probabilities, the
call at the bundle's validation threshold, the out-of-distribution scores (mean features, tissue colour) and
flag of :mod:`histokd.features.ood`) and, where the cohort has ``patient_id``, ``patients.csv`` (per patient: the max
of its slides' probabilities, the call, whether any slide is out of distribution). Without labels there are no
metrics and the report says so.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histokd.errors import InputError
from histokd.workspace import Workspace, encoder_dirname, read_csv, write_csv

log = logging.getLogger("histokd")

#: slide files picked from a folder given to ``--slides`` (what OpenSlide / tiffslide open)
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide")


@dataclass
class PredictResult:
    """What ``predict`` did: the workspace, the model id, the files written, per-slide failures (first cause)."""

    workspace: Path
    model_id: str
    slides_csv: Path | None = None
    patients_csv: Path | None = None
    report: Path | None = None
    failures: dict[str, str] = field(default_factory=dict)
    n_total: int = 0
    n_predicted: int = 0
    n_ood: int = 0
    labelled: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _slide_id(path: Path, taken: set[str]) -> str:
    name = path.name
    for suf in (".ome.tiff", ".ome.tif", *SLIDE_SUFFIXES):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    sid = re.sub(r"[^A-Za-z0-9._\-]+", "_", name).strip("._-")[:120] or "slide"
    sid = sid.replace("..", "_")
    base, k = sid, 2
    while sid in taken:
        sid, k = f"{base}-{k}", k + 1
    taken.add(sid)
    return sid


def input_cohort(slides: str | os.PathLike[str] | list[str | os.PathLike[str]], ws: Workspace) -> Path:
    """The cohort CSV for ``slides``: a cohort CSV as given (label optional), else ``OUT/input_slides.csv`` written
    from the paths / the folder's slide files (slide id = file name without its extension)."""
    items = [slides] if isinstance(slides, (str, os.PathLike)) else list(slides)
    if not items:
        raise InputError("--slides: no slides given; give slide files, a folder of slides or a cohort CSV")
    if len(items) == 1 and str(items[0]).lower().endswith(".csv"):
        return Path(items[0]).expanduser()
    paths: list[Path] = []
    for it in items:
        p = Path(it).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.name.lower().endswith(SLIDE_SUFFIXES))
            if not found:
                raise InputError(f"{p}: no slide files ({', '.join(SLIDE_SUFFIXES)}) in this folder; give slide files "
                                 f"or a cohort CSV")
            paths += found
        else:
            paths.append(p)  # a missing file is that slide's failure at tiling
    taken: set[str] = set()
    rows = [(_slide_id(p, taken), str(p.resolve())) for p in paths]
    return write_csv(ws.predict_input_csv, ["slide_id", "path"], rows)


def _tissue_params(tiling: dict[str, Any]) -> Any:
    from histokd.slides.tissue import TissueParams

    given = dict(tiling.get("tissue_params") or {})
    known = {f.name for f in dataclasses.fields(TissueParams)}
    unknown = sorted(set(given) - known)
    if unknown:
        log.warning("bundle tissue settings %s are unknown to this histokd; left at their defaults", unknown)
    return TissueParams(**{k: v for k, v in given.items() if k in known})


def _bundle_tiling(ws: Workspace, model_id: str, model: Any, bundle: dict[str, Any]) -> dict[str, Any]:
    """The tiling the model's features were made with (refused where the bundle records none)."""
    tiling = bundle.get("tiling")
    if not tiling or tiling.get("target_mpp") is None or tiling.get("patch_size") is None:
        raise InputError(f"{ws.model_files(model_id).bundle}: the model records no tiling (trained on imported "
                         f"features); tile and embed the slides as its features were made, then `histokd label "
                         f"--model {model}`")
    if tiling.get("tissue_source") not in (None, "auto"):
        log.warning("the model's training slides were tiled with user tissue masks; predict detects tissue itself "
                    "(a tissue_mask_path column in the cohort CSV is used where given)")
    return tiling


def predict(
    model: str | os.PathLike[str],
    slides: str | os.PathLike[str] | list[str | os.PathLike[str]],
    workspace: str | os.PathLike[str] | Workspace,
    *,
    workers: int = 2,
    batch_size: int = 64,
    device: str = "auto",
    runtime: str = "auto",
    slide_mpp: float | None = None,
    backend: str = "auto",
    overwrite: bool = False,
    n_boot: int = 1000,
    report: bool = True,
    wait: bool = False,
) -> PredictResult:
    """Apply the model bundle ``model`` (folder or archive) to ``slides`` in run folder ``workspace``.

    Args:
        model: a model folder (``RUN/models/<id>``) or a ``.tar.gz`` from ``histokd export-model``.
        slides: slide files, a folder of slide files, or a cohort CSV (``slide_id,path[,label][,patient_id]``).
        workspace: the run folder for the outputs (created); re-running the same call resumes.
        workers, batch_size, device, runtime: as for ``tile`` / ``embed`` (the precision is the bundle's).
        slide_mpp: level-0 µm/px for slides without resolution metadata.
        n_boot: bootstrap resamples for the metrics (labelled slides only).
        report: write the HTML report (``RUN/reports/<id>/``).

    Per-slide failures are in ``PredictResult.failures`` (the first stage's reason); bad inputs for the
    whole call (the bundle, the options, the cohort CSV) raise one-line errors before any work.
    """
    from histokd.data.cohort import load_workspace_cohort
    from histokd.pipeline.bundle import encoder_spec, install_model, read_bundle
    from histokd.pipeline.embed import embed
    from histokd.pipeline.label import label
    from histokd.pipeline.report import run_report
    from histokd.pipeline.tile import tile

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    ws.root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model_id = install_model(model, ws, wait=wait)
    mdir = ws.model_dir(model_id)
    bundle = read_bundle(mdir)
    tiling = _bundle_tiling(ws, model_id, model, bundle)
    cohort_csv = input_cohort(slides, ws)
    timings["setup"] = time.perf_counter() - t0
    res = PredictResult(workspace=ws.root, model_id=model_id)
    stage = functools.partial(_timed, timings)
    tres = stage("tile", tile, cohort_csv, ws, mpp=float(tiling["target_mpp"]), size=int(tiling["patch_size"]),
                 overlap=int(tiling.get("overlap") or 0), min_tissue=float(tiling.get("min_tissue", 0.5)),
                 workers=workers, overwrite=overwrite, slide_mpp=slide_mpp, backend=backend,
                 tissue_params=_tissue_params(tiling), wait=wait)
    failures = dict(tres.failures)
    f = bundle["features"]
    spec = encoder_spec(bundle, mdir)
    stain = None if str(f.get("stain_norm", "none")) == "none" else str(f["stain_norm"])
    if tres.n_tiles:
        eres = stage("embed", embed, ws, spec, batch_size=batch_size, workers=workers, device=device,
                     precision=str(f.get("precision") or "fp32"), runtime=runtime, dtype=str(f.get("dtype") or "float32"),
                     stain_norm=stain, overwrite=overwrite, wait=wait)
        _first_failures(failures, eres.failed)
    cohort = load_workspace_cohort(ws)
    res.n_total = len(cohort)
    if len(failures) >= res.n_total:  # nothing to label
        res.failures = failures
        res.timings = timings
        return res
    lres = stage("label", label, ws, model_id, features=encoder_dirname(spec), overwrite=overwrite, n_boot=n_boot,
                 wait=wait)
    _first_failures(failures, lres.failures)
    res.labelled = cohort.labelled
    res.metrics = lres.metrics if cohort.labelled else {}
    t = time.perf_counter()
    res.slides_csv, res.patients_csv, res.n_predicted, res.n_ood = write_slide_tables(
        ws, model_id, bundle, encoder_dirname(spec), cohort)
    timings["tables"] = time.perf_counter() - t
    if report:
        rres = stage("report", run_report, ws, model_id, n_boot=n_boot, wait=wait)
        res.report = rres.index
        _first_failures(failures, rres.failures)
    res.failures = failures
    res.timings = timings
    return res


def _timed(timings: dict[str, float], name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, its wall time recorded as ``timings[name]``."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    timings[name] = time.perf_counter() - t
    return out


def _first_failures(failures: dict[str, str], more: dict[str, str]) -> None:
    """Add a later stage's failures; a slide keeps the reason of the first stage that failed it."""
    for sid, why in more.items():
        failures.setdefault(sid, why)


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def write_slide_tables(ws: Workspace, model_id: str, bundle: dict[str, Any], features: str,
                       cohort: Any) -> tuple[Path | None, Path | None, int, int]:
    """``slides.csv`` (and ``patients.csv`` where the cohort has patient ids) from ``label``'s ``bags.csv`` and the
    out-of-distribution scores; returns (slides.csv, patients.csv or None, slides predicted, slides flagged)."""
    from histokd.pipeline.bundle import bag_threshold, ood_of_slide

    bags_csv = ws.predictions_bags_csv(model_id)
    if not bags_csv.is_file():
        return None, None, 0, 0
    bags = read_csv(bags_csv)
    classes = [str(c) for c in bundle["classes"]]
    pos = str(bundle["positive_class"])
    others = [c for c in classes if c != pos]
    thr = bag_threshold(bundle)
    summaries = bundle.get("ood") or {}
    df = cohort.df
    rows_by_id = {str(r["slide_id"]): r for r in cohort.rows()}
    has_patients = "patient_id" in df.columns and any(v is not None for v in df["patient_id"])
    labelled = cohort.labelled

    def threshold_of(what: str) -> Any:
        s = summaries.get(what)
        return round(float(s["threshold"]), 4) if s else ""

    header = ["slide_id", *(["patient_id"] if has_patients else []), *(["label"] if labelled else []),
              "pred", *(f"prob_{c}" for c in classes), "threshold", "call", "ood_feature_score",
              "ood_feature_threshold", "ood_colour_score", "ood_colour_threshold", "ood"]
    rows, per_patient, n_ood = [], {}, 0
    for r in bags.to_dict("records"):
        sid = str(r["slide_id"])
        probs = {c: _float(r.get(f"prob_{c}")) for c in classes}
        p = probs[pos]
        if p >= thr:
            call = pos
        else:
            call = max(others, key=lambda c: probs[c]) if others else ""
        o = ood_of_slide(bundle, ws, features, sid, rows_by_id)
        flag: Any = "" if o["flag"] is None else int(o["flag"])
        n_ood += int(bool(o["flag"]))
        patient = df.at[sid, "patient_id"] if has_patients and sid in df.index else None
        label = (df.at[sid, "label"] if sid in df.index else None) if labelled else None
        rows.append([sid, *([patient or ""] if has_patients else []), *([label or ""] if labelled else []),
                     r.get("pred", ""), *(probs[c] for c in classes), thr, call,
                     "" if o["feature_score"] is None else round(o["feature_score"], 4), threshold_of("features"),
                     "" if o["colour_score"] is None else round(o["colour_score"], 4), threshold_of("colour"), flag])
        if has_patients and patient:
            per_patient.setdefault(str(patient), []).append((sid, p, flag, label))
    slides_csv = write_csv(ws.predictions_slides_csv(model_id), header, rows, float_format="%.6f")
    patients_csv = None
    if has_patients:
        prow = []
        for pid, items in sorted(per_patient.items()):
            pmax = max(it[1] for it in items)
            labels = [it[3] for it in items if it[3]]
            plabel = (pos if pos in labels else labels[0]) if labels else ""
            prow.append([pid, len(items), ";".join(it[0] for it in items), *([plabel] if labelled else []), pmax,
                         thr, pos if pmax >= thr else (others[0] if len(others) == 1 else f"not {pos}"),
                         int(any(it[2] == 1 for it in items)) if summaries else ""])
        patients_csv = write_csv(ws.predictions_patients_csv(model_id),
                                 ["patient_id", "n_slides", "slides", *(["label"] if labelled else []),
                                  f"prob_{pos}_max", "threshold", "call", "ood_any"], prow, float_format="%.6f")
    return slides_csv, patients_csv, len(rows), n_ood


def slide_table_ood(ws: Workspace, model_id: str) -> dict[str, dict[str, Any]]:
    """Per slide from ``slides.csv``: ``flag`` and the text of its out-of-distribution scores (empty where
    predict did not write one)."""
    path = ws.predictions_slides_csv(model_id)
    if not path.is_file():
        return {}
    try:
        df = read_csv(path)
    except (OSError, ValueError):
        return {}
    out = {}
    for r in df.to_dict("records"):
        if str(r.get("ood", "")) in ("0", "1"):
            parts = [f"{what} {r[f'ood_{what}_score']} / {r[f'ood_{what}_threshold']}" for what in ("feature", "colour")
                     if str(r.get(f"ood_{what}_score", "")) != ""]
            out[str(r["slide_id"])] = {"flag": r["ood"] == "1", "text": ", ".join(parts)}
    return out
