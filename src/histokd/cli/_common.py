"""Shared CLI plumbing: logging, one-line errors without tracebacks, exit codes."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from histokd.errors import HistokdError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("histokd")


def run_command(fn: F) -> F:
    """Decorator for CLI commands: sets up logging and turns a :class:`HistokdError` into one line + exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from histokd.progress import setup_logging

        setup_logging(verbose=bool(kwargs.get("verbose", False)))
        try:
            return fn(*args, **kwargs)
        except HistokdError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; completed outputs are kept, re-run the same command to resume", err=True)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def fail_summary(failures: dict[str, str], total: int, what: str = "slides") -> None:
    """Print the per-item failures and exit non-zero when any item failed."""
    if failures:
        typer.echo(f"{len(failures)} of {total} {what} failed:", err=True)
        for k, msg in failures.items():
            typer.echo(f"  {k}: {msg}", err=True)
        raise typer.Exit(code=1)


_ = sys
