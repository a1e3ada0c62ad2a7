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
    assert issubclass(WenoLabeler, TeacherBagScorer) and issubclass(WenoLabeler, SingletonTeacher)
    assert not issubclass(WenoPixelLabeler, SingletonTeacher)  # it labels pixels, not feature rows
    assert issubclass(WenoPixelLabeler, SlideLabeler) and issubclass(WenoPixelLabeler, PixelBagLabeler)
    assert not issubclass(WenoLabeler, PixelBagLabeler)
    assert issubclass(IFKDLabeler, SlideLabeler)
    for proto in (SlideLabeler, PixelBagLabeler, TeacherBagScorer, SingletonTeacher):
        assert not issubclass(MILLabeler, proto)


def _probes(tree: ast.AST) -> list[int]:
    """Lines that ask an object whether it has an attribute: ``hasattr(x, ...)`` or ``getattr(x, "name", default)``."""
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
            if n.func.id == "hasattr" or (n.func.id == "getattr" and len(n.args) == 3):
                out.append(n.lineno)
    return out


def test_the_pipeline_does_not_probe_attributes() -> None:
    found = {p.name: _probes(ast.parse(p.read_text())) for p in sorted(PIPELINE.glob("*.py"))}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_probe_finder_sees_both_forms() -> None:
    src = "hasattr(a, 'meta')\ngetattr(a, 'decision', None)\ngetattr(a, name)\n"
    assert _probes(ast.parse(src)) == [1, 2]
