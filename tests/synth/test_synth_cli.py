"""``histokd synth`` on the command line."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from histokd.cli import app


def test_synth_help() -> None:
    res = CliRunner().invoke(app, ["synth", "--help"])
    assert res.exit_code == 0
    for opt in ("--slides", "--seed", "--preset", "--size", "--workers", "--set"):
        assert opt in res.output


def test_synth_cli_writes_cohort(tmp_path: Path) -> None:
    out = tmp_path / "c"
    res = CliRunner().invoke(app, ["synth", str(out), "--slides", "2", "--size", "512", "--workers", "1",
                                   "--preset", "hard", "--set", "lesion_count=1,1"])
    assert res.exit_code == 0, res.output
    assert (out / "cohort.csv").is_file()
    assert len(list((out / "slides").glob("*.tiff"))) == 2


def test_synth_cli_bad_preset_is_one_line_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "x"), "--preset", "nope", "--size", "512"])
    assert res.exit_code == 2
    assert "unknown synth preset" in res.output


def test_api_verb_is_callable_after_subpackage_import(tmp_path: Path) -> None:
    import histokd
    import histokd.synth.generate  # noqa: F401 - rebinds histokd.synth to the package

    csv = histokd.synth(tmp_path / "api", slides=1, size=512, workers=1, show_progress=False)
    assert csv.name == "cohort.csv" and csv.is_file()
