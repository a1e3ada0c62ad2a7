"""Labellers declare what they can do through the protocols of methods/base.py; the pipeline asks those."""

from __future__ import annotations

import ast
from pathlib import Path

from histokd.methods.base import PixelBagLabeler, SingletonTeacher, SlideLabeler, TeacherBagScorer

PIPELINE = Path(__file__).resolve().parents[2] / "src" / "histokd" / "pipeline"


def test_labeller_classes_match_their_protocols() -> None:
    from histokd.methods.distill_to_label import D2LLabeler
    from histokd.methods.ifkd import IFKDLabeler
    from histokd.methods.mil import MILLabeler
    from histokd.methods.weno import WenoLabeler, WenoPixelLabeler

    assert issubclass(D2LLabeler, SingletonTeacher) and issubclass(D2LLabeler, TeacherBagScorer)
    assert issubclass(WenoLabeler, TeacherBagScorer) and not issubclass(WenoLabeler, SingletonTeacher)
    assert issubclass(WenoPixelLabeler, SlideLabeler) and issubclass(WenoPixelLabeler, PixelBagLabeler)
    assert not issubclass(WenoLabeler, PixelBagLabeler)
    assert issubclass(IFKDLabeler, SlideLabeler)
    for proto in (SlideLabeler, PixelBagLabeler, TeacherBagScorer, SingletonTeacher):
        assert not issubclass(MILLabeler, proto)


def test_label_bench_train_do_not_probe_attributes() -> None:
    for name in ("label.py", "bench.py", "train.py"):
        tree = ast.parse((PIPELINE / name).read_text())
        probes = [n.lineno for n in ast.walk(tree)
                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "hasattr"]
        assert probes == [], (name, probes)
