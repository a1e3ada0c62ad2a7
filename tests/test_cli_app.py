import subprocess
import sys

from typer.testing import CliRunner

from histokd.cli import app

runner = CliRunner()


def test_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ["doctor", "demo"]:
        assert cmd in res.output


def test_every_command_has_help():
    import typer.main

    group = typer.main.get_command(app)
    names = list(group.commands)
    assert len(names) >= 2
    for name in names:
        res = runner.invoke(app, [name, "--help"])
        assert res.exit_code == 0, (name, res.output)
        assert "Usage" in res.output


def test_doctor_reports_versions_and_devices():
    res = runner.invoke(app, ["doctor"])
    assert res.exit_code == 0, res.output
    assert "torch" in res.output and "device cpu" in res.output and "reader openslide" in res.output


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "histokd.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "histokd" in out.stdout
