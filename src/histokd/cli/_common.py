"""Shared CLI plumbing: logging, one-line errors without tracebacks, exit codes.

Every command is wrapped by :func:`run_command`, the CLI's top-level handler:

* a :class:`~histokd.errors.HistokdError` (a bad input we know about) -> its own one-line message, exit 2;
* Ctrl-C -> one line, exit 130 (finished outputs are kept);
* any other exception (a bug, or an input we did not foresee) -> one line
  ``error: <type>: <message>; rerun with -v for the traceback``, exit 1. The traceback is appended to
  ``<workspace>/logs/histokd.log`` when the command has a ``-w`` workspace that exists, and printed with
  ``-v``.

``-v`` / ``--verbose`` works before the command (``histokd -v tile ...``) and after it (``histokd tile ... -v``):
debug logging, and tracebacks on stderr.
"""

from __future__ import annotations

import datetime
import errno
import functools
import inspect
import logging
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from typer.exceptions import TyperException

from histokd.errors import HistokdError, one_line

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("histokd")

_MAX_MESSAGE = 300
_state = {"verbose": False}


def set_verbose(verbose: bool) -> None:
    """Record the root ``histokd -v`` flag for the command that follows (called by the app callback)."""
    _state["verbose"] = bool(verbose)


def run_command(fn: F) -> F:
    """Decorator for CLI commands: logging set-up, a ``-v`` option, and the top-level error handler."""
    own_verbose = "verbose" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from histokd.progress import setup_logging

        flag = kwargs.get("verbose", False) if own_verbose else kwargs.pop("verbose", False)
        verbose = bool(flag) or _state["verbose"]
        setup_logging(verbose=verbose)
        try:
            return fn(*args, **kwargs)
        except HistokdError as e:
            log.debug("%s", type(e).__name__, exc_info=verbose)
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; completed outputs are kept, re-run the same command to resume", err=True)
            raise typer.Exit(code=130) from None
        except (typer.Exit, typer.Abort, TyperException, SystemExit):  # typer's own exits and usage errors
            raise
        except OSError as e:
            line = storage_error(e)
            if line is None:
                _unexpected(e, fn.__name__, kwargs, verbose)
                raise typer.Exit(code=1) from None
            log.debug("%s", type(e).__name__, exc_info=verbose)
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(code=2) from None
        except Exception as e:  # noqa: BLE001 - the top-level handler: one line instead of a traceback
            _unexpected(e, fn.__name__, kwargs, verbose)
            raise typer.Exit(code=1) from None

    if not own_verbose:  # every command takes -v, not only the root
        sig = inspect.signature(fn, eval_str=True)
        extra = inspect.Parameter(
            "verbose", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
            default=typer.Option(False, "--verbose", "-v", help="Debug logging; tracebacks of unexpected errors."),
        )
        wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), extra])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**fn.__annotations__, "verbose": bool}
    return wrapper  # type: ignore[return-value]


_READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS}
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def storage_error(e: OSError) -> str | None:
    """One line (file, what, fix) for a write that the file system refused, else None.

    A read-only or foreign-owned workspace and a full disk are the user's to fix, not bugs: they get their
    own message instead of the unexpected-error line."""
    where = e.filename or "the workspace"
    if e.errno in _READ_ONLY:
        return (f"{where}: {e.strerror or 'permission denied'}; make it readable / writable for this user (a "
                f"read-only workspace cannot be written: choose another -w folder or output path)")
    if e.errno in _FULL or "No space left" in str(e) or "Disk quota" in str(e):
        return (f"{where}: no space left on the device; free some space (or use -w on another disk), then re-run "
                f"the same command: finished outputs are kept and the run resumes")
    return None


def _unexpected(e: Exception, command: str, params: dict[str, Any], verbose: bool) -> None:
    """Report an unexpected exception: the traceback to the workspace log (and stderr with -v), one line."""
    tb = traceback.format_exc()
    log_path = _append_workspace_log(params.get("workspace"), command, params, tb)
    if verbose:
        typer.echo(tb.rstrip(), err=True)
    message = one_line(e, _MAX_MESSAGE) or "(no message)"
    where = f" (traceback in {log_path})" if log_path is not None else ""
    hint = "the traceback is above" if verbose else "rerun with -v for the traceback"
    typer.echo(f"error: {type(e).__name__}: {message}; {hint}{where}", err=True)


def _append_workspace_log(workspace: Any, command: str, params: dict[str, Any], tb: str) -> Path | None:
    """Append ``tb`` to ``<workspace>/logs/histokd.log``; None when there is no workspace or it is not writable."""
    if not isinstance(workspace, (str, os.PathLike)) or not Path(workspace).is_dir():
        return None
    import histokd

    from histokd.workspace import Workspace

    path = Workspace(workspace).log_file
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    args = " ".join(f"{k}={v}" for k, v in params.items() if k != "ctx" and v not in (None, False, [], ()))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(f"--- {when} histokd {histokd.__version__} pid {os.getpid()}: {command} {args}\n{tb}\n")
    except OSError:
        return None
    return path


def fail_summary(failures: dict[str, str], total: int, what: str = "slides") -> None:
    """Print the per-item failures and exit non-zero when any item failed."""
    if failures:
        typer.echo(f"{len(failures)} of {total} {what} failed:", err=True)
        for k, msg in failures.items():
            typer.echo(f"  {k}: {msg}", err=True)
        raise typer.Exit(code=1)


CONFIG_HELP = ("YAML file of this stage's settings (keys: the long option names with '_', --bootstrap is n_boot); "
               "options given here win.")
SET_HELP = "Override a setting, e.g. --set min_tissue=0.3 (repeatable); wins over --config, loses to options."


def stage_settings(ctx: typer.Context | None, cls: Any, config: Path | None, set_: list[str] | None,
                   renamed: dict[str, str] | None = None, **values: Any) -> Any:
    """The stage config ``cls``: its defaults < ``--config FILE`` < ``--set`` < the options given on the
    command line (``values``: config key -> the option's value; ``renamed``: config key -> the command's
    parameter name where they differ). Options left at their default do not override the file; without a
    command context (a direct call) every value counts as given."""
    from histokd.pipeline.configs import stage_config

    given: dict[str, Any] = {}
    for key, value in values.items():
        source = ctx.get_parameter_source((renamed or {}).get(key, key)) if ctx is not None else None
        if ctx is None or (source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")):
            given[key] = value
    return stage_config(cls, config, list(set_ or []) or None, given)
