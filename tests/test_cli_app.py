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


def test_an_option_means_the_same_in_every_command():
    """-m is --model wherever it exists, the method is always --method, bootstrap resamples are --bootstrap,
    -w is --workspace and -v is --verbose (issue 14)."""
    import typer.main

    group = typer.main.get_command(app)
    same = {"-m": "--model", "-w": "--workspace", "-v": "--verbose"}
    for name, cmd in group.commands.items():
        for p in cmd.params:
            opts = set(p.opts) | set(p.secondary_opts)
            for short, long in same.items():
                if short in opts:
                    assert long in opts, (name, p.opts)
            if p.name == "method":
                assert "--method" in opts and "-m" not in opts, (name, p.opts)
            assert "--n-boot" not in opts or p.hidden, (name, p.opts)  # report keeps it as a hidden alias
            if p.name == "n_boot":
                assert "--bootstrap" in opts, (name, p.opts)


def test_report_keeps_n_boot_as_a_hidden_deprecated_alias():
    res = runner.invoke(app, ["report", "--help"])
    assert res.exit_code == 0 and "--bootstrap" in res.output and "--n-boot" not in res.output


# commands whose output holds bootstrap 95% CIs without naming them in the command's own code
_PRINTS_CIS_VIA_TABLE = {"compare-encoders"}  # the probe table's "probe AUC 95% CI" columns


def _group_commands():
    import typer.main

    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a sub-group (e.g. synth): its own commands
            yield from ((f"{name} {n}", c) for n, c in cmd.commands.items())
        else:
            yield name, cmd


def test_every_command_printing_cis_has_bootstrap_and_every_command_takes_v():
    import inspect

    printing = set()
    for name, cmd in _group_commands():
        opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        assert "-v" in opts and "--verbose" in opts, name
        src = inspect.getsource(cmd.callback) if cmd.callback is not None else ""
        if name in _PRINTS_CIS_VIA_TABLE or "ci95" in src or "95% CI" in src:
            printing.add(name)
            assert "--bootstrap" in opts, f"{name} prints 95% CIs but has no --bootstrap"
    assert {"label", "report", "predict", "probe", "compare-encoders"} <= printing, printing
