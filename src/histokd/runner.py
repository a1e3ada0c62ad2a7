"""The per-slide runner: skip / resume, one failure line per slide, progress with rate and ETA.

Every per-slide stage that works in this process runs its slides through :func:`run_slides` (``label``,
``report``, IFKD's ``label_ifkd``); it sits on the lowest floor so that a method's own per-slide loop can use
it too:

* ``resume(item)`` (optional) returns the item's result when it is already done (read back, not
  recomputed), else None; ``work(item)`` computes it;
* an exception of the types in ``catch`` (by default :class:`~histokd.errors.HistokdError` and
  :class:`OSError`) raised by either is that slide's failure: ``failures[id] = str(e)``, logged with
  ``failure_log`` (``"%s: %s"``: id, message), and the other slides go on; any other exception is a bug
  and propagates;
* the progress bar advances once per item (``histokd.progress``: count, rate, ETA).

The result keeps the items' order: ``results`` holds (id, result) of every slide done, now or before
(``resumed`` names the ones read back). ``tile`` and ``embed`` keep their own loops: their slides run in
worker processes (tile: a spawn pool, one slide per worker, failures returned by the worker; embed: a
tile-reading DataLoader pipeline feeding one encoder, or Ray, with progress counted in tiles), whose
scheduling this sequential runner would serialise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from histokd.errors import HistokdError
from histokd.progress import progress

log = logging.getLogger("histokd")

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")  # its result


@dataclass
class SlideRun(Generic[R]):
    """What :func:`run_slides` did: results in item order, the ids read back, failures (id -> one line)."""

    results: list[tuple[str, R]] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def n_total(self) -> int:
        return len(self.results) + len(self.failures)


def run_slides(
    items: Iterable[I],
    key: Callable[[I], str],
    work: Callable[[I], R],
    *,
    resume: Callable[[I], R | None] | None = None,
    description: str = "slides",
    total: int | None = None,
    catch: tuple[type[BaseException], ...] = (HistokdError, OSError),
    failure_log: str = "%s: %s",
    show_progress: bool | None = None,
) -> SlideRun[R]:
    """Run ``work`` over ``items`` (see the module docstring); ``key(item)`` is the slide id."""
    items = list(items)
    run: SlideRun[R] = SlideRun()
    with progress(disable=None if show_progress is None else not show_progress) as bar:
        task = bar.add_task(description, total=len(items) if total is None else total, unit="slide")
        for item in items:
            sid = key(item)
            try:
                done = resume(item) if resume is not None else None
                if done is not None:
                    run.resumed.append(sid)
                else:
                    done = work(item)
            except catch as e:
                run.failures[sid] = str(e)
                log.warning(failure_log, sid, e)
            else:
                run.results.append((sid, done))
            bar.advance(task)
    return run
