"""Errors meant for people: each names the file or slide, what was wrong, and what to do."""

from __future__ import annotations


class HistokdError(Exception):
    """Base class for every error histokd raises on purpose.

    The message is one line: ``<what/where>: <what was wrong>; <the fix>``.
    The CLI prints it without a traceback.
    """


class InputError(HistokdError):
    """Bad user input: a cohort CSV, a config, an option."""


class SlideError(HistokdError):
    """A slide cannot be opened or read (missing, corrupt, unsupported, no mpp)."""


class FeatureError(HistokdError):
    """A feature file is missing, corrupt, or of the wrong shape."""


class ModelError(HistokdError):
    """A model folder is missing or does not match its config."""
