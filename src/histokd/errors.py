"""Errors meant for people: each names the file or slide, what was wrong, and what to do."""

from __future__ import annotations


def one_line(text: object, limit: int = 120) -> str:
    """``text`` on one line (whitespace runs, newlines included, become one space), cut to ``limit`` characters:
    for quoting a library's message inside a one-line error."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class HistokdError(Exception):
    """Base class for every error histokd raises on purpose.

    The message is one line: ``<what/where>: <what was wrong>; <the fix>``.
    The CLI prints it without a traceback. A line break that reaches the message from user data (a header
    cell, a file name) is shown as ``\\n`` so the promise of one line holds whatever the input.
    """

    def __str__(self) -> str:
        text = super().__str__()
        return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


class InputError(HistokdError):
    """Bad user input: a cohort CSV, a config, an option."""


class SlideError(HistokdError):
    """A slide cannot be opened or read (missing, corrupt, unsupported, no mpp)."""


class FeatureError(HistokdError):
    """A feature file is missing, corrupt, or of the wrong shape."""


class ModelError(HistokdError):
    """A model folder is missing or does not match its config."""
