"""Issue 16, ground-truth mask files through the real commands: a GeoJSON whose coordinates are flat or
strings used to abort the whole ``report`` with a traceback, and an ASAP XML without coordinates gave a
tumour slide an all-negative ground truth without a word. Each is now one line naming the file and the
fix, for that slide only; the other slides are labelled and reported."""

from __future__ import annotations

import json
from pathlib import Path

from badinput import TILE_ARGS, cli, cohort_rows, write_cohort

SQUARE = [[0, 0], [128, 0], [128, 256], [0, 256], [0, 0]]  # the purple (tumour) left half of a test slide


def _geojson(path: Path, coords: object) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": "Polygon", "coordinates": coords}}]}))
    return path


def _squeeze(text: str) -> str:
    return "".join(text.split())


def test_bad_mask_files_fail_their_slide_only(tmp_path: Path, slide_files):
    flat = _geojson(tmp_path / "t0_flat.geojson", SQUARE)
    strings = _geojson(tmp_path / "t1_strings.geojson", [[[str(x), str(y)] for x, y in SQUARE]])
    good = _geojson(tmp_path / "t2.geojson", [SQUARE])
    no_coords = tmp_path / "t3.xml"
    no_coords.write_text('<?xml version="1.0"?><ASAP_Annotations><Annotations><Annotation Name="Annotation 0" '
                         'Type="Polygon" PartOfGroup="Tumor"><Coordinates/></Annotation></Annotations>'
                         '</ASAP_Annotations>')
    masks = {"t0": flat, "t1": strings, "t2": good, "t3": no_coords}
    rows = [[*r, str(masks.get(r[0], ""))] for r in cohort_rows(slide_files)]
    cohort = write_cohort(tmp_path / "cohort.csv", rows, header=("slide_id", "path", "label", "split", "mask_path"),
                          tissue_png=slide_files.tissue_png)
    ws = tmp_path / "run"
    assert cli("tile", cohort, "-w", ws, *TILE_ARGS).exit_code == 0
    assert cli("embed", "-w", ws, "-e", "handcrafted", "-j", "0").exit_code == 0
    r = cli("train", "-w", ws, "--method", "abmil", "--max-epochs", "1", "--model-id", "m")
    assert r.exit_code == 0, r.output
    cli("label", "-w", ws, "--model", "m", "--bootstrap", "10")
    r = cli("report", "-w", ws, "-m", "m", "--bootstrap", "10", "--top-k", "1", "--thumbnail-size", "64")
    out = _squeeze(r.output)  # rich wraps long lines, even inside a word
    # report lists a slide it cannot report as skipped, with its line, and counts it as a failure (exit 1)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "3skipped" in out and "3of8slidesfailed:" in out
    assert _squeeze(f"{flat}: feature 0 (Polygon): coordinates are one level too flat ([[x, y], ...]); a Polygon is a list "
            f"of rings ([[[x, y], ...]]); fix the file or export the annotations again from QuPath") in out
    assert _squeeze(f"{strings}: feature 0 (Polygon): coordinate '0' is not a number; fix the file") in out
    assert _squeeze(f"{no_coords}: annotation(s) 'Annotation 0' (0) have no polygon: fewer than the 3 <Coordinate X= Y=/> "
            f"elements of a polygon (counts in brackets) or no area, so the mask would be empty; export the "
            f"annotations again from ASAP") in out
    heatmaps = sorted(p.stem for p in (ws / "reports/m/heatmaps").glob("*.png"))
    assert heatmaps == ["n0", "n1", "n2", "n3", "t2"], r.output
