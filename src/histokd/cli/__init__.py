"""The ``histokd`` command line: a thin typer layer over the Python API.

Each command lives in its own module here (``cli/tile.py`` ...), which exposes ``register(app)``.
Heavy imports happen inside the command bodies so that ``histokd --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging

import typer

from histokd.cli._common import run_command, set_verbose  # noqa: F401  (run_command re-exported for command modules)

app = typer.Typer(
    name="histokd",
    help="Slide-level labels to instance-level knowledge: MIL teachers distilled into tile and pixel labellers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging; tracebacks of unexpected errors."),
) -> None:
    """histokd: MIL on slide labels, distilled into tile / pixel labellers."""
    set_verbose(verbose)  # applied by the command's handler (run_command), which sets up logging


# One module per command (or group of commands). Order is the order of `histokd --help`.
_COMMAND_MODULES = [
    "demo",
    "synth",
    "tile",
    "embed",
    "train",
    "label",
    "report",
    "view",
    "predict",
    "bench",
    "encoder",
    "doctor",
]

for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"histokd.cli.{_name}")
    except ModuleNotFoundError as _e:  # a command whose module is not written yet
        if _e.name != f"histokd.cli.{_name}":
            raise
        logging.getLogger("histokd").debug("CLI module %s not present", _name)
        continue
    _mod.register(app)


def main() -> None:  # pragma: no cover
    app()
