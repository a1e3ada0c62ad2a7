"""Issue 16, the CLI's top-level handler: an unexpected exception is one line + exit 1, its traceback goes to
the workspace log (and to stderr with -v); project errors keep their own line and exit 2; -v works."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from badinput import cli
from typer.testing import CliRunner

from histokd.cli import app
from histokd.errors import InputError

log = logging.getLogger("histokd")


def _raise(exc: BaseException):
    def fake_train(*args, **kwargs):
        raise exc

    return fake_train


def _error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


def test_unexpected_error_is_one_line_and_logged(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("histokd.pipeline.train.train", _raise(ValueError("operands could not be broadcast\ntogether")))
    ws = tmp_path / "run"
    ws.mkdir()
    r = cli("train", "-w", ws, "--method", "abmil")
    assert r.exit_code == 1
    log_file = ws / "logs" / "histokd.log"
    assert r.output.strip() == (f"error: ValueError: operands could not be broadcast together; rerun with -v for the "
                                f"traceback (traceback in {log_file})")
    text = log_file.read_text()
    assert "Traceback (most recent call last)" in text and "ValueError: operands could not be broadcast" in text
    assert "train " in text and "method=abmil" in text
    # a second failure is appended, not overwritten
    cli("train", "-w", ws)
    assert log_file.read_text().count("Traceback (most recent call last)") == 2


def test_unexpected_error_without_a_workspace_writes_nothing(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("histokd.pipeline.train.train", _raise(KeyError("features")))
    r = cli("train", "-w", tmp_path / "not-there")
    assert r.exit_code == 1
    assert _error_lines(r.output) == ["error: KeyError: 'features'; rerun with -v for the traceback"]
    assert not (tmp_path / "not-there").exists()


@pytest.mark.parametrize("where", ["after", "before"])
def test_verbose_shows_the_traceback(tmp_path: Path, monkeypatch, where: str):
    monkeypatch.setattr("histokd.pipeline.train.train", _raise(RuntimeError("boom")))
    args = ["train", "-w", str(tmp_path)]
    args = [*args, "-v"] if where == "after" else ["-v", *args]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert "Traceback (most recent call last)" in r.output and "RuntimeError: boom" in r.output
    assert _error_lines(r.output)[-1].startswith("error: RuntimeError: boom; the traceback is above")


def test_project_errors_keep_their_line_and_exit_2(tmp_path: Path, monkeypatch):
    msg = f"{tmp_path}/cohort.csv: slide 'a': empty label; give the slide-level label"
    monkeypatch.setattr("histokd.pipeline.train.train", _raise(InputError(msg)))
    r = cli("train", "-w", tmp_path)
    assert r.exit_code == 2 and r.output.strip() == f"error: {msg}"
    assert not (tmp_path / "logs").exists()


def test_interrupt_exits_130(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("histokd.pipeline.train.train", _raise(KeyboardInterrupt()))
    r = cli("train", "-w", tmp_path)
    assert r.exit_code == 130 and "re-run the same command to resume" in r.output


def test_verbose_turns_on_debug_logging_everywhere(tmp_path: Path, monkeypatch):
    """``-v`` used to be reset to INFO by every command's logging set-up."""
    def fake_train(*args, **kwargs):
        log.debug("debug-marker-1234")
        return tmp_path

    monkeypatch.setattr("histokd.pipeline.train.train", fake_train)
    assert "debug-marker-1234" not in cli("train", "-w", tmp_path).output
    assert "debug-marker-1234" in cli("train", "-w", tmp_path, "-v").output
    assert "debug-marker-1234" in cli("-v", "train", "-w", tmp_path).output
    assert "debug-marker-1234" not in cli("train", "-w", tmp_path).output  # not sticky
    r = cli("report", "--help")
    assert "--verbose" in r.output


def test_every_command_takes_verbose():
    import typer.main

    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"-v", "--verbose"} <= opts, name
