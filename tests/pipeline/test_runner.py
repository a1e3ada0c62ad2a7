"""The per-slide runner (histokd/runner.py): resume, one failure line per slide, order kept, bugs propagate."""

from __future__ import annotations

import pytest

from histokd.errors import InputError
from histokd.runner import run_slides


def test_resume_failures_and_order(caplog):
    def work(i: int) -> int:
        if i == 2:
            raise InputError("slide two: unreadable")
        if i == 3:
            raise OSError("disk gone")
        return i * 10

    run = run_slides(range(5), key=lambda i: f"s{i}", work=work, resume=lambda i: -1 if i == 1 else None,
                     show_progress=False, description="test")
    assert run.results == [("s0", 0), ("s1", -1), ("s4", 40)]
    assert run.resumed == ["s1"]
    assert run.failures == {"s2": "slide two: unreadable", "s3": "disk gone"}
    assert run.n_total == 5
    assert "s2: slide two: unreadable" in caplog.text


def test_only_the_caught_errors_are_failures():
    with pytest.raises(OSError):
        run_slides(["a"], key=str, work=lambda s: (_ for _ in ()).throw(OSError("x")), catch=(InputError,),
                   show_progress=False)
    with pytest.raises(ZeroDivisionError):  # a bug is not a slide's failure
        run_slides(["a"], key=str, work=lambda s: 1 / 0, show_progress=False)
