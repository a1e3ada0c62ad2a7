"""One pydantic config per per-slide stage (pipeline/configs.py): fields = the verb's keyword arguments, the
same defaults as the CLI, ``--config FILE.yaml`` < ``--set`` < explicit options, unknown keys refused."""

from __future__ import annotations

import inspect

import pytest
import typer.main
from typer.testing import CliRunner

from histokd.cli import app
from histokd.errors import InputError
from histokd.pipeline.configs import (
    EmbedConfig,
    LabelConfig,
    PredictConfig,
    ReportConfig,
    TileConfig,
    stage_config,
)

runner = CliRunner()

# (config, verb, the verb's inputs and the keywords kept out of the config: API-only hooks)
STAGES = [
    (TileConfig, "histokd.pipeline.tile:tile", {"cohort", "workspace", "tissue_params", "show_progress"}),
    (EmbedConfig, "histokd.pipeline.embed:embed", {"workspace"}),
    (LabelConfig, "histokd.pipeline.label:label", {"workspace", "model"}),
    (ReportConfig, "histokd.pipeline.report:run_report", {"workspace", "model_id"}),
    (PredictConfig, "histokd.pipeline.predict:predict", {"model", "slides", "workspace"}),
]
# CLI parameter -> config key where they differ (and parameters of the command that are not settings)
RENAMED = {"label": {"threshold": "tumour_threshold"}, "predict": {"no_report": "report"}}
NOT_SETTINGS = {"cohort", "workspace", "model", "slides_opt", "config", "set_", "verbose", "n_boot_old"}


def _verb(target: str):
    import importlib

    mod, name = target.split(":")
    return getattr(importlib.import_module(mod), name)


@pytest.mark.parametrize(("cls", "target", "inputs"), STAGES, ids=[s[0].__name__ for s in STAGES])
def test_config_fields_are_the_verbs_keywords_with_its_defaults(cls, target, inputs):
    params = {n: p for n, p in inspect.signature(_verb(target)).parameters.items() if n not in inputs}
    assert set(params) == set(cls.model_fields), (cls.__name__, set(params) ^ set(cls.model_fields))
    defaults = cls().model_dump()
    for name, p in params.items():
        assert defaults[name] == p.default, (cls.__name__, name)


@pytest.mark.parametrize("command", ["tile", "embed", "label", "report", "predict"])
def test_cli_defaults_are_the_config_defaults(command):
    from histokd.pipeline.configs import STAGE_CONFIGS

    cmd = typer.main.get_command(app).commands[command]
    defaults = STAGE_CONFIGS[command]().model_dump()
    opts = {p.name for p in cmd.params}
    assert {"config", "set_"} <= opts, command
    for p in cmd.params:
        if p.name in NOT_SETTINGS or (command == "predict" and p.name == "slides"):
            continue
        key = RENAMED.get(command, {}).get(p.name, p.name)
        assert key in defaults, (command, p.name)
        want = defaults[key]
        got = p.default
        if p.name == "no_report":
            got = not got
        if p.name == "stain_norm":
            got = None if got == "none" else got
        if p.name == "label_map" or p.name == "slides":
            got = got or None
        assert got == want, (command, p.name, got, want)


def test_precedence_file_then_set_then_explicit(tmp_path):
    f = tmp_path / "tile.yaml"
    f.write_text("mpp: 0.25\nsize: 256\nmin_tissue: 0.3\n")
    cfg = stage_config(TileConfig, f, ["size=128", "overlap=16"], {"min_tissue": 0.7})
    assert (cfg.mpp, cfg.size, cfg.overlap, cfg.min_tissue) == (0.25, 128, 16, 0.7)
    assert cfg.workers == 2  # untouched default


def test_unknown_keys_are_refused_with_one_line(tmp_path):
    f = tmp_path / "label.yaml"
    f.write_text("n_bot: 10\n")
    with pytest.raises(InputError, match=r"label.yaml: invalid LabelConfig \(n_bot: Extra inputs"):
        stage_config(LabelConfig, f)
    with pytest.raises(InputError, match=r"--set: invalid ReportConfig \(topk: "):
        stage_config(ReportConfig, None, ["topk=3"])


def test_cli_config_file_and_explicit_options(tmp_path, monkeypatch):
    import histokd.pipeline.tile as tile_mod

    seen = {}

    def fake_tile(cohort, workspace, **kw):
        seen.update(kw)
        return tile_mod.TilingResult(workspace=workspace)

    monkeypatch.setattr(tile_mod, "tile", fake_tile)
    f = tmp_path / "tile.yaml"
    f.write_text("mpp: 0.25\nsize: 256\n")
    res = runner.invoke(app, ["tile", "c.csv", "-w", str(tmp_path / "run"), "--config", str(f),
                              "--set", "overlap=8", "--size", "128"])
    assert res.exit_code == 0, res.output
    assert (seen["mpp"], seen["size"], seen["overlap"], seen["min_tissue"]) == (0.25, 128, 8, 0.5)

    res = runner.invoke(app, ["tile", "c.csv", "-w", str(tmp_path / "run"), "--set", "min_tisue=0.2"])
    assert res.exit_code == 2
    assert "error: --set: invalid TileConfig (min_tisue: Extra inputs are not permitted)" in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1
