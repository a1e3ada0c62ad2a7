"""Model bundles: a model folder that also records how its inputs were made, so that it can be applied to new
slides (``histokd predict``, ``histokd label --model PATH``) and refuses features made another way.

``histokd train`` writes ``RUN/models/<id>/bundle.json`` (:func:`write_bundle`) beside the weights:

* ``tiling``: target µm/px, tile size, overlap, minimum tissue fraction and tissue-detection settings, read
  from the training slides' tile grids (``RUN/tiles/<slide>.h5``);
* ``features``: the encoder spec, its weights hash, the feature dimension, the precision, runtime, stored
  dtype and stain normalisation, read from the training feature files; an ``mfl:`` encoder folder is copied
  into the model folder (``encoder/``) so that the bundle carries its own encoder;
* ``classes``, ``positive_class``, ``thresholds`` chosen on the validation split (bag probability of the
  positive class: the Youden-optimal threshold and the operating point at 95% specificity; the labeller's
  instance threshold where it has one), ``ood`` (:mod:`histokd.features.ood`: summaries of the training
  slides' mean features and tissue colour), ``histokd_version`` and the
  sha256 of every portable file (``files``).

No slide id goes into ``bundle.json``. ``histokd export-model`` packs the portable files
(:meth:`~histokd.workspace.ModelFiles.portable_files`; the cohort files only with ``include_cohort``) into one
``.tar.gz``; :func:`install_model` copies a bundle (folder or archive, extracted safely) into a run folder's
``models/<id>/`` and :func:`check_features` refuses features that do not match it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from histokd.errors import FeatureError, HistokdError, InputError, ModelError, one_line
from histokd.pipeline.bundle_inputs import (  # noqa: F401 - colour_descriptor, ood_of_slide re-exported
    _cohort_rows,
    _features_of,
    _tiling_of,
    colour_descriptor,
    ood_of_slide,
)
from histokd.workspace import ModelFiles, Workspace, atomic_path, file_sha256, write_json

log = logging.getLogger("histokd")

BUNDLE_FORMAT = 1
SPECIFICITY = 0.95  # the operating point recorded beside the Youden threshold
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
_MAX_ARCHIVE_BYTES = 8 << 30  # what an archive may unpack to; model folders are megabytes


# ------------------------------------------------------------------------------------------------------
# writing (histokd train)
# ------------------------------------------------------------------------------------------------------
def choose_thresholds(y: np.ndarray, p: np.ndarray, specificity: float = SPECIFICITY) -> dict[str, Any]:
    """Bag decision thresholds on the validation slides: ``y`` [n] 1 for the positive class, ``p`` [n] its
    probability. A slide is positive when ``p >= threshold``. Youden-optimal (max sensitivity + specificity - 1)
    and the most sensitive threshold with specificity >= ``specificity``; None where validation has one class."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y, int)
    p = np.asarray(p, np.float64)
    out: dict[str, Any] = {"chosen_on": "val", "n_val": int(len(y)), "n_val_positive": int(y.sum())}
    if len(set(y.tolist())) < 2:
        out.update(youden=None, at_specificity=None,
                   note="the validation split lacks one of the classes: no threshold chosen (0.5 is used)")
        return out
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    thr = np.clip(thr, 0.0, 1.0)  # the first threshold is +inf: nothing positive

    def cut(k: int) -> float:
        # midway between the validation score at the cut and the next lower one: the same sensitivity and
        # specificity on validation, less brittle on new slides than the score of one validation slide
        return float((thr[k] + thr[k + 1]) / 2) if k + 1 < len(thr) else float(thr[k])

    k = int(np.argmax(tpr - fpr))
    out["youden"] = {"threshold": cut(k), "sensitivity": float(tpr[k]), "specificity": float(1 - fpr[k])}
    ok = np.flatnonzero(1 - fpr >= specificity)
    j = int(ok[np.argmax(tpr[ok])])
    out["at_specificity"] = {"target_specificity": specificity, "threshold": cut(j),
                             "sensitivity": float(tpr[j]), "specificity": float(1 - fpr[j])}
    return out


def bag_threshold(bundle: dict[str, Any]) -> float:
    """The bag decision threshold of a bundle: the Youden one chosen on validation, else 0.5."""
    t = (bundle.get("thresholds") or {}).get("youden") or {}
    v = t.get("threshold")
    return float(v) if isinstance(v, (int, float)) and 0 <= v <= 1 else 0.5


def _copy_file(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_bundle(ws: Workspace, model_dir: Path, features: str, ds: Any, labeler: Any,
                 val_probs: np.ndarray | None) -> Path:
    """Write ``model_dir/bundle.json`` for a model just trained on ``ds`` (a BagDataset with splits) from
    feature set ``features``; ``val_probs`` [n_val, C] are the model's bag probabilities on ``ds.split("val")``."""
    import histokd
    from histokd.features.ood import fit_ood, slide_descriptor
    from histokd.features.store import read_features
    from histokd.methods.base import model_positive_class, read_model_meta

    files = ModelFiles(model_dir)
    meta = read_model_meta(model_dir)
    classes = [str(c) for c in meta.get("classes") or ds.classes]
    pos = model_positive_class({**meta, "classes": classes})
    train_recs = [r for r in ds.records if r.split in ("train", "val") and r.path is not None]
    feats = _features_of([r.path for r in train_recs], ws.features_dir(features))
    encoder: dict[str, Any] = {"spec": feats.pop("encoder"), "weights_hash": feats.pop("weights_hash")}
    if str(encoder["spec"]).startswith("mfl:"):  # the encoder travels with the model
        from histokd.workspace import EncoderFiles

        src = EncoderFiles(str(encoder["spec"])[len("mfl:"):])
        for p in (src.config, src.weights):
            if not p.is_file():
                raise ModelError(f"{src.dir}: the mfl: encoder of feature set {features!r} is gone (no {p.name}); "
                                 f"restore it, or re-embed and retrain")
            _copy_file(p, files.encoder_dir / p.name)
        encoder["folder"] = files.encoder_dir.name
    val = ds.split("val")
    thresholds: dict[str, Any]
    if val_probs is not None and len(val):
        thresholds = choose_thresholds((np.asarray(val.labels) == pos).astype(int), np.asarray(val_probs)[:, pos])
    else:
        thresholds = {"chosen_on": "val", "n_val": 0, "youden": None, "at_specificity": None,
                      "note": "no validation split: no threshold chosen (0.5 is used)"}
    inst_t = (labeler.meta or {}).get("instance_threshold")
    thresholds["instance"] = float(inst_t) if isinstance(inst_t, (int, float)) else None
    if meta.get("decision") is not None:  # a bag-logit shift the labeller applies itself (its meta)
        thresholds["labeller_decision"] = meta["decision"]  # as saved: the cut, without its calibration scores
    descriptors, colours, no_colour = [], [], {}
    rows = _cohort_rows(ws)
    for r in train_recs:
        with contextlib.suppress(HistokdError, OSError):
            descriptors.append(slide_descriptor(read_features(r.path, expected_dim=feats["dim"]).features))
        try:
            colours.append(colour_descriptor(ws, r.slide_id, rows))
        except (HistokdError, OSError) as e:  # no tile grid (imported features), or the slide moved
            no_colour[r.slide_id] = str(e)
    if no_colour:
        sid, why = next(iter(no_colour.items()))
        log.warning("%d training slide(s) without colour statistics for the out-of-distribution summary, e.g. %s: "
                    "%s", len(no_colour), sid, why)
    ood = {"features": fit_ood(descriptors), "colour": fit_ood(colours)}
    for what, summary in ood.items():
        if summary is None:
            log.warning("%s: fewer than 4 train/val slides with %s; the bundle has no %s out-of-distribution "
                        "summary", model_dir, what, what)
    doc = {
        "bundle_format": BUNDLE_FORMAT,
        "histokd_version": histokd.__version__,
        "model_id": str(meta.get("model_id") or model_dir.name),
        "method": meta["method"],
        "classes": classes,
        "positive_class": classes[pos],
        "features": {"name": features, **encoder, **feats},
        "tiling": _tiling_of(ws, [r.slide_id for r in train_recs]),
        "thresholds": thresholds,
        "ood": ood,
        "files": {p.relative_to(model_dir).as_posix(): file_sha256(p)
                  for p in files.portable_files() if p != files.bundle},
    }
    return write_json(files.bundle, doc)


# ------------------------------------------------------------------------------------------------------
# reading and checking
# ------------------------------------------------------------------------------------------------------
def read_bundle(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``bundle.json`` of a model folder; a one-line ModelError when it is missing or damaged."""
    path = ModelFiles(model_dir).bundle
    if not path.is_file():
        raise ModelError(f"{Path(model_dir)}: no bundle.json, so the model's tiling and encoder are unknown (trained "
                         f"by an older histokd, or not a model folder); retrain it with `histokd train`")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable ({one_line(e)}); export the model again or retrain it") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("features"), dict) or "model_id" not in doc:
        raise ModelError(f"{path}: not a histokd model bundle (no features / model_id); export the model again")
    if int(doc.get("bundle_format", 0)) > BUNDLE_FORMAT:
        raise ModelError(f"{path}: bundle format {doc.get('bundle_format')} is newer than this histokd reads "
                         f"({BUNDLE_FORMAT}); upgrade histokd")
    return doc


def encoder_spec(bundle: dict[str, Any], model_dir: str | os.PathLike[str]) -> str:
    """The encoder spec that reproduces the bundle's features: its own copy of an ``mfl:`` folder, else its spec."""
    f = bundle["features"]
    if f.get("folder"):
        return f"mfl:{Path(model_dir).resolve() / f['folder']}"
    return str(f["spec"])


def _kind(spec: Any) -> str:
    return str(spec).partition(":")[0] if str(spec).startswith(("mfl:", "torchscript:")) else str(spec)


def _differences(bundle: dict[str, Any], shape: tuple[int, ...], attrs: dict[str, Any]) -> list[str]:
    """What differs between the bundle's features and one feature file (``shape`` [N, D], its attrs)."""
    f = bundle["features"]
    diff = []
    if f.get("weights_hash") and (_kind(attrs.get("encoder")) != _kind(f.get("spec"))
                                   or str(attrs.get("weights_hash")) != str(f["weights_hash"])):
        diff.append(f"encoder {attrs.get('encoder')} (weights {str(attrs.get('weights_hash'))[:12]}), the model's is "
                    f"{f.get('spec')} (weights {str(f['weights_hash'])[:12]})")
    mpp = attrs.get("target_mpp")
    if f.get("target_mpp") is not None and (mpp is None or abs(float(mpp) - float(f["target_mpp"])) > 1e-6):
        diff.append(f"{mpp} µm/px, the model's is {f['target_mpp']}")
    ps = attrs.get("patch_size")
    if f.get("patch_size") is not None and (ps is None or int(ps) != int(f["patch_size"])):
        diff.append(f"{ps} px tiles, the model's are {f['patch_size']} px")
    prec = str(attrs.get("precision", "fp32"))
    if prec != str(f.get("precision", "fp32")):
        diff.append(f"precision {prec}, the model's is {f.get('precision')}")
    sn = str(attrs.get("stain_norm", "none"))
    if sn != str(f.get("stain_norm", "none")):
        diff.append(f"stain normalisation {sn}, the model's is {f.get('stain_norm')}")
    return diff


def _feature_files(fdir: Path) -> list[Path]:
    return sorted(p for p in fdir.glob("*.h5") if not p.name.startswith("."))


def check_features(bundle: dict[str, Any], ws: Workspace, features: str, model_id: str) -> None:
    """Refuse, with one line, the feature set ``RUN/features/<features>/`` when its files were made otherwise
    than the bundle's (dimension, encoder or weights, µm/px, tile size, precision, stain normalisation)."""
    from histokd.features.store import feature_file_info

    fdir = ws.features_dir(features)
    want = bundle["features"]
    fix = (f"label features made as the model's: `histokd predict --model MODEL --slides ...` tiles and embeds "
           f"with them ({want.get('spec')}, {want.get('target_mpp')} µm/px, {want.get('patch_size')} px, "
           f"{want.get('precision', 'fp32')}), or retrain the model on these features")
    for p in _feature_files(fdir):
        info = feature_file_info(p)
        if info is None:
            continue  # an unreadable file is that slide's failure, reported by label
        shape, _, attrs = info
        if len(shape) == 2 and shape[0] > 0 and int(shape[1]) != int(want["dim"]):
            raise FeatureError(f"{fdir}: features are {shape[1]}-d but model {model_id!r} was trained on "
                               f"{want['dim']}-d features ({want.get('spec')}); {fix}")
        diff = _differences(bundle, shape, attrs)
        if diff:
            raise FeatureError(f"{fdir}: features made with {'; '.join(diff)} (model {model_id!r}); {fix}")
    tiling = bundle.get("tiling") or {}
    for p in _feature_files(fdir)[:1]:
        tpath = ws.tiles_h5(p.stem)
        if tpath.is_file() and tiling:
            import h5py

            with contextlib.suppress(OSError), h5py.File(tpath, "r") as f:
                for key in ("overlap", "min_tissue"):
                    if key in f.attrs and tiling.get(key) is not None and float(f.attrs[key]) != float(tiling[key]):
                        log.warning("%s: tiles made with %s=%s, the model's tiling has %s (labelled anyway)",
                                    tpath, key, f.attrs[key], tiling[key])


def find_feature_set(bundle: dict[str, Any], ws: Workspace, model_id: str) -> str:
    """The workspace's feature set made by the bundle's encoder (its own name first); otherwise the only
    feature set (which :func:`check_features` then refuses with what differs)."""
    from histokd.features.store import feature_file_info

    root = ws.root / "features"
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not names:
        raise FeatureError(f"{root}: no feature sets; run `histokd embed -w {ws.root} --encoder "
                           f"{bundle['features'].get('spec')}` first, or `histokd predict` on the slides")
    own = bundle["features"].get("name")
    for name in sorted(names, key=lambda n: n != own):
        files = _feature_files(root / name)
        info = feature_file_info(files[0]) if files else None
        if info is not None and not _differences(bundle, info[0], info[2]) and int(info[0][1]) == int(bundle["features"]["dim"]):
            return name
    if own in names:
        return own
    if len(names) == 1:
        return names[0]
    raise FeatureError(f"{root}: none of the feature sets ({', '.join(names)}) was made by model {model_id!r}'s encoder "
                       f"{bundle['features'].get('spec')}; choose one with --features, or run `histokd embed`")


# ------------------------------------------------------------------------------------------------------
# export, safe extraction, installing into a run folder
# ------------------------------------------------------------------------------------------------------
def export_model(workspace: str | os.PathLike[str] | Workspace, model_id: str, out: str | os.PathLike[str],
                 include_cohort: bool = False) -> Path:
    """Pack ``RUN/models/<model_id>/`` into ``out`` (``.tar.gz``): the portable files under ``<model_id>/``; with
    ``include_cohort`` also the files that name the training slides (splits, metrics, training log)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    files = ws.model_files(model_id)
    bundle = read_bundle(files.dir)
    verify_files(bundle, files.dir)
    out = Path(out)
    if not str(out).endswith(ARCHIVE_SUFFIXES):
        raise InputError(f"{out}: the model archive must end in .tar.gz or .tgz; give -o MODEL.tar.gz")
    members = files.portable_files() + (files.cohort_files() if include_cohort else [])
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for p in members:
            info = tar.gettarinfo(str(p), arcname=f"{model_id}/{p.relative_to(files.dir).as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with p.open("rb") as fh:
                tar.addfile(info, fh)
    return out


def verify_files(bundle: dict[str, Any], model_dir: Path) -> None:
    """Check the sha256 of every file the bundle lists (damaged or swapped weights are refused)."""
    for rel, sha in (bundle.get("files") or {}).items():
        p = model_dir / rel
        if not p.is_file():
            raise ModelError(f"{p}: missing from the model bundle; export the model again")
        if file_sha256(p) != sha:
            raise ModelError(f"{p}: does not match the sha256 in {ModelFiles(model_dir).bundle.name} (changed or "
                             f"damaged after training); export the model again or retrain it")


def _safe_member(m: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    name = PurePosixPath(m.name)
    if not (m.isfile() or m.isdir()):
        kind = "link" if (m.issym() or m.islnk()) else "device or special file"
        raise ModelError(f"{archive}: member {m.name!r} is a {kind}; a model archive holds only files and folders, "
                         f"so it is refused (export it again with `histokd export-model`)")
    if name.is_absolute() or m.name.startswith(("/", "\\")) or ".." in name.parts or "\\" in m.name or ":" in m.name:
        raise ModelError(f"{archive}: member {m.name!r} points outside the archive's folder; refused (export it "
                         f"again with `histokd export-model`)")
    return name


def extract_archive(archive: str | os.PathLike[str], dest: Path) -> Path:
    """Unpack a model archive into ``dest`` (an empty folder) and return its model folder; refuses absolute
    paths, ``..``, links, devices and more than one top folder, before anything is written."""
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            names = [_safe_member(m, archive) for m in members]
            tops = {n.parts[0] for n in names if n.parts}
            if len(tops) != 1:
                raise ModelError(f"{archive}: a model archive holds one model folder, this has {len(tops)}; export "
                                 f"it with `histokd export-model`")
            if sum(m.size for m in members if m.isfile()) > _MAX_ARCHIVE_BYTES:
                raise ModelError(f"{archive}: unpacks to more than {_MAX_ARCHIVE_BYTES >> 30} GiB; not a model archive")
            for m, name in zip(members, names):
                target = dest.joinpath(*name.parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                if src is None:
                    raise ModelError(f"{archive}: member {m.name!r} cannot be read; export the model again")
                with src, target.open("wb") as fh:
                    shutil.copyfileobj(src, fh)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise ModelError(f"{archive}: not a readable model archive ({type(e).__name__}: {one_line(e)}); give a "
                         f"file written by `histokd export-model`") from None
    return dest / tops.pop()


def is_model_path(model: str | os.PathLike[str], ws: Workspace | None = None) -> bool:
    """Whether ``--model`` names a folder or archive (rather than a model id of the workspace)."""
    s = str(model)
    if ws is not None and "/" not in s and os.sep not in s:
        with contextlib.suppress(InputError):
            if ws.model_dir(s).is_dir():
                return False
    return s.endswith(ARCHIVE_SUFFIXES) or "/" in s or os.sep in s or Path(s).exists()


@contextlib.contextmanager
def opened_bundle(source: str | os.PathLike[str], scratch: Path | None = None):  # noqa: ANN201 - a context manager
    """A bundle folder for ``source`` (a model folder, or an archive unpacked into a temporary folder under
    ``scratch``) while the block runs."""
    src = Path(source).expanduser()
    if not src.exists():
        raise ModelError(f"{src}: no such model folder or archive; give a folder RUN/models/<id> or a .tar.gz "
                         f"written by `histokd export-model`")
    if src.is_dir():
        yield src
        return
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".histokd-import-", dir=scratch))
    try:
        yield extract_archive(src, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install_model(source: str | os.PathLike[str], ws: Workspace, wait: bool = False, create: bool = True) -> str:
    """Copy the portable files of the bundle ``source`` (folder or archive) into ``RUN/models/<id>/`` and return
    the id. Reuses a copy already there with the same files; refuses another model under that id. The cohort
    files (splits, metrics) are never copied: the new slides' splits are their own cohort's. ``create``: make
    the run folder when it does not exist (``predict``); else it must exist (``label``)."""
    scratch = ws.root / "models" if (create or ws.root.is_dir()) else None
    with opened_bundle(source, scratch) as src:
        bundle = read_bundle(src)
        verify_files(bundle, src)
        model_id = str(bundle["model_id"])
        target = ws.model_files(model_id)
        if target.dir.resolve() == src.resolve():
            return model_id
        with ws.writer(target.dir, wait=wait, create=create):
            if target.bundle.is_file():
                with contextlib.suppress(HistokdError):
                    if read_bundle(target.dir).get("files") == bundle.get("files"):
                        verify_files(bundle, target.dir)
                        return model_id
            if target.weights.exists() or target.bundle.exists():
                raise ModelError(f"{target.dir}: another model with id {model_id!r} is already in this workspace; "
                                 f"use another workspace (-w) for this model, or remove that folder")
            srcf = ModelFiles(src)
            for p in srcf.portable_files():  # bundle.json last: a folder with it is complete
                if p != srcf.bundle:
                    _copy_file(p, target.dir / p.relative_to(src))
            _copy_file(srcf.bundle, target.bundle)
        log.info("model %s installed from %s into %s", model_id, source, target.dir)
        return model_id


def resolve_model(ws: Workspace, model: str | os.PathLike[str], wait: bool = False) -> str:
    """``--model``: a model id of the workspace (returned as is), or a bundle folder / archive installed into the
    workspace (:func:`install_model`), whose id is returned."""
    if is_model_path(model, ws):
        return install_model(model, ws, wait=wait, create=False)
    return str(model)
