"""Progress bars (rich) with rate and ETA, and logging set-up. The library never prints."""

from __future__ import annotations

import logging
import os
import sys

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
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger("histokd")
    root.setLevel(level)
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        h = RichHandler(show_path=False, show_time=False, markup=False, console=None)
        h.setLevel(level)
        root.addHandler(h)
    root.propagate = False
    _ = sys  # stdout stays free for machine-readable output
