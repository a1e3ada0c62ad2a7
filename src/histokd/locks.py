"""The one-writer lock of an artefact folder (``tiles/``, ``features/<enc>/``, ``models/<id>/``, ...):
:func:`writer_lock`, refused with :class:`WorkspaceBusy` naming the holder. Re-exported by
:mod:`histokd.workspace`, whose ``Workspace.writer`` takes it."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from histokd.errors import InputError


def _command_line() -> str:
    """The running command, e.g. ``histokd embed -w RUN -e efficientnet_lite0`` (for a lock holder's record)."""
    import sys

    argv = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


class WorkspaceBusy(InputError):
    """Another histokd process is writing the same artefact folder."""


@contextlib.contextmanager
def writer_lock(folder: str | os.PathLike[str], command: str = "", wait: bool = False) -> Iterator[None]:
    """Hold the one-writer lock of an artefact folder (``tiles/``, ``features/<enc>/``, ``models/<id>/``, ...)
    while the block runs.

    An advisory lock (``filelock``, ``fcntl.flock`` on POSIX) on ``<folder>/.histokd.lock``: the operating
    system releases it when its process dies, so a killed run never leaves a stale lock. A second writer
    is refused with one line naming the holder (pid, host, command, start time, from
    ``.histokd.lock.json``), or with ``wait`` blocks until the holder is done. Different folders (two
    models, two encoders) are written concurrently.
    """
    import datetime
    import socket

    from filelock import FileLock, Timeout

    from histokd.workspace import write_json  # on use: the workspace module imports this one

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".histokd.lock"), timeout=-1 if wait else 0)
    info_path = folder / ".histokd.lock.json"
    try:
        lock.acquire()
    except Timeout:
        holder = "another histokd process"
        with contextlib.suppress(Exception):
            h = json.loads(info_path.read_text(encoding="utf-8"))
            holder = f"pid {h['pid']} on {h['host']} ({h['command']}, since {h['started']})"
        raise WorkspaceBusy(
            f"{folder}: being written by {holder}; wait for it to finish or rerun with --wait "
            f"(a lock held by a dead process is released by the system)"
        ) from None
    try:
        with contextlib.suppress(OSError):
            write_json(info_path, {"pid": os.getpid(), "host": socket.gethostname(), "command": command or _command_line(),
                                   "started": datetime.datetime.now().isoformat(timespec="seconds")})
        yield
    finally:
        with contextlib.suppress(OSError):
            info_path.unlink()
        lock.release()
