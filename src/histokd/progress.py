"""Progress bars (rich) with rate and ETA, and logging set-up. The library never prints."""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import ProgressColumn
from rich.text import Text

log = logging.getLogger("histokd")


class RateColumn(ProgressColumn):
    """Items per second, with the unit given in the task's ``unit`` field."""

    def render(self, task) -> Text:  # noqa: ANN001 - rich's Task type
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        if speed is None:
            return Text(f"? {unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.1f} {unit}/s", style="progress.data.speed")


def progress(disable: bool | None = None) -> Progress:
    """A progress bar with count, rate and ETA. Disabled when ``HISTOKD_NO_PROGRESS`` is set."""
    if disable is None:
        disable = bool(os.environ.get("HISTOKD_NO_PROGRESS"))
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=disable,
        transient=False,
    )


def setup_logging(verbose: bool = False) -> None:
    """Log ``histokd.*`` to stderr (stdout stays free for machine-readable output): INFO, or DEBUG when verbose.

    Called once per CLI command; a second call changes the level of the handler already installed.
    """
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger("histokd")
    root.setLevel(level)
    handlers = [h for h in root.handlers if isinstance(h, RichHandler)]
    if not handlers:
        h = RichHandler(show_path=False, show_time=False, markup=False, console=Console(stderr=True))
        root.addHandler(h)
        handlers = [h]
    for h in handlers:
        h.setLevel(level)
    root.propagate = False
