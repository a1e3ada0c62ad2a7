"""``histokd report``: a slide it cannot report is a failure with its one line and exit code 1, as in ``label``
(issue 16; it used to exit 0). Slides left out by request (``--slides``) are not failures."""

from __future__ import annotations

from badinput import TILE_ARGS, cli, cohort_rows, write_cohort

from histokd.workspace import read_csv, write_frame_csv

REPORT = ("--bootstrap", "10", "--top-k", "1", "--thumbnail-size", "64")


def _squeeze(text: str) -> str:
    return "".join(text.split())  # rich wraps long log lines, even inside a word


def _labelled(tmp_path, slide_files, rows=None):
    co = write_cohort(tmp_path / "a.csv", rows or cohort_rows(slide_files), tissue_png=slide_files.tissue_png)
    run = tmp_path / "run"
    assert cli("tile", co, "-w", run, *TILE_ARGS).exit_code == 0
    assert cli("embed", "-w", run, "-e", "handcrafted", "-j", "0").exit_code == 0
    assert cli("train", "-w", run, "--method", "abmil", "--model-id", "m", "--max-epochs", "1").exit_code == 0
    assert cli("label", "-w", run, "--model", "m", "--bootstrap", "10").exit_code == 0
    return run


def test_slides_report_cannot_draw_are_failures(tmp_path, slide_files):
    run = _labelled(tmp_path, slide_files)
    moved = tmp_path / "moved" / "t2.tif"  # the slide file moved away after labelling
    df = read_csv(run / "cohort.csv")
    df.loc[df["slide_id"] == "t2", "path"] = str(moved)
    write_frame_csv(run / "cohort.csv", df)
    r = cli("report", "-w", run, "-m", "m", *REPORT)
    assert r.exit_code == 1, r.output
    out = _squeeze(r.output)
    assert "1of8slidesfailed:" in out and "Traceback" not in r.output
    assert _squeeze(f"t2: {moved}: slide file not found; fix the path in the cohort CSV") in out
    assert (run / "reports" / "m" / "index.html").is_file()  # the report of the other slides is still written
    assert len(list((run / "reports" / "m" / "heatmaps").glob("*.png"))) == 7
    assert "t2" in (run / "reports" / "m" / "index.html").read_text()  # listed under "Skipped slides"

    # a requested slide without a prediction is a failure; the slides not requested are not
    r = cli("report", "-w", run, "-m", "m", "--slides", "t1", "--slides", "x9", *REPORT)
    assert r.exit_code == 1
    out = _squeeze(r.output)
    assert "1of2slidesfailed:" in out
    assert _squeeze(f"x9: {run / 'predictions' / 'm' / 'x9.h5'}: prediction missing; run `histokd label` for this "
                    f"slide") in out
    r = cli("report", "-w", run, "-m", "m", "--slides", "t1", "--slides", "n1", *REPORT)
    assert r.exit_code == 0 and "failed" not in r.output, r.output
