"""The shape of the code base: test file names, and the layers of ``src/histokd`` (docs/contracts.md).

The layering check is an AST walk over every module of the package. It sees every import: top-level,
inside functions, relative ones, ``importlib.import_module("histokd....")`` (an f-string counts by its
constant prefix) and module paths kept as strings for a later import (``"histokd.features.mfl_encoder"``
in a lazy registry). A module may import its own floor and the floors below it, never one above; and no
library module may call a pipeline verb through the public facade (``histokd.embed(...)``): where two
verbs compose, the pipeline composes them.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "histokd"

# Floors, bottom (0) to top: a module may import its own floor and any floor below it.
FLOORS: dict[str, int] = {
    "config": 0, "workspace": 0, "locks": 0, "runner": 0, "errors": 0, "registry": 0, "progress": 0, "classes": 0, "predictions": 0,
    "slides": 1, "synth": 1,
    "features": 2, "models": 2, "segmentation": 2,
    "data": 3,
    "engine": 4, "evaluate": 4, "outputs": 4,
    "methods": 5,
    "pipeline": 6, "viewer": 6,
    "cli": 7,
    "__main__": 8,  # ``python -m histokd``: runs the CLI
}
# Not layered: the public facade, which names every verb and imports them lazily.
FACADE = "histokd"
# Packages that may call the verbs (they are, or sit above, the pipeline).
VERB_CALLERS = {"pipeline", "cli", "__main__"}
# Upward imports that are allowed, each with its reason: (importing module, imported module) -> why.
# Keep this empty; add an entry only where moving the policy down is impossible, and say why.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

_MODULE_STRING = re.compile(r"^histokd(\.[A-Za-z_][A-Za-z0-9_]*)+(:[A-Za-z_][A-Za-z0-9_]*)?$")


def test_test_module_basenames_are_unique():
    # pytest's default import mode needs unique basenames across folders without __init__.py
    names = Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []


# ------------------------------------------------------------------------------------------------------
# the walk
# ------------------------------------------------------------------------------------------------------
def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor_of(module: str) -> int | None:
    """Floor of a ``histokd.*`` module name; None for the facade; KeyError for an unplaced package."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return FLOORS[parts[1]]


def _is_module(name: str) -> bool:
    """Whether ``histokd.a.b`` names a module or package of the source tree (found without importing it)."""
    parts = name.split(".")
    if parts[0] != "histokd":
        return False
    base = SRC.joinpath(*parts[1:])
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported ``histokd`` module) for every import the source makes, wherever it is."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from histokd.slides import tiling`` imports a module, ``from histokd import embed`` a verb
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.append((node.lineno, sub if a.name != "*" and _is_module(sub) else target))
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value))
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                prefix = str(arg.values[0].value).rstrip(".")  # f"histokd.methods.{name}" -> histokd.methods
                found.append((node.lineno, prefix))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.match(node.value):
            name = node.value.partition(":")[0]
            if _is_module(name):  # a module path kept for a later import (lazy registries)
                found.append((node.lineno, name))
    return sorted({(line, name) for line, name in found if name == "histokd" or name.startswith("histokd.")})


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__"))


def verb_calls(source: str) -> list[tuple[int, str]]:
    """(line, ``histokd.<verb>``) where the source reaches a pipeline verb through the facade."""
    verbs = pipeline_verbs()
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and node.attr in verbs and isinstance(node.value, ast.Name)
                and node.value.id == "histokd"):
            found.append((node.lineno, f"histokd.{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.module == "histokd" and not node.level:
            found += [(node.lineno, f"from histokd import {a.name}") for a in node.names if a.name in verbs]
    return sorted(found)


def pipeline_verbs() -> set[str]:
    import histokd

    return {name for name, target in histokd._API.items() if target.startswith("histokd.pipeline.")}


def layer_violations() -> list[str]:
    out: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        module = module_name(path)
        if module == FACADE:
            continue
        rel = path.relative_to(SRC.parents[1])
        top = module.split(".")[1]
        if top not in FLOORS:
            out.append(f"{rel}: package {top!r} has no floor; place it in FLOORS (tests/test_layout.py) "
                       f"and in docs/contracts.md")
            continue
        source = path.read_text(encoding="utf-8")
        mine = FLOORS[top]
        for line, name in imports_of(source, module, path.name == "__init__.py"):
            try:
                theirs = floor_of(name)
            except KeyError:
                out.append(f"{rel}:{line}: imports {name}, a package with no floor")
                continue
            if theirs is not None and theirs > mine and (module, name) not in ALLOWED_UPWARD:
                out.append(f"{rel}:{line}: {top} (floor {mine}) imports {name} (floor {theirs})")
        if top not in VERB_CALLERS:
            out += [f"{rel}:{line}: library module calls the pipeline verb {what}; let the pipeline compose it"
                    for line, what in verb_calls(source)]
    return out


# ------------------------------------------------------------------------------------------------------
# the tests
# ------------------------------------------------------------------------------------------------------
def test_every_import_goes_down_the_floors():
    violations = layer_violations()
    assert not violations, "imports against the layers (docs/contracts.md):\n" + "\n".join(violations)


def test_allowed_upward_imports_are_still_needed():
    seen = set()
    for path in sorted(SRC.rglob("*.py")):
        module = module_name(path)
        if module != FACADE:
            seen |= {(module, n) for _, n in imports_of(path.read_text(encoding="utf-8"), module,
                                                        path.name == "__init__.py")}
    assert set(ALLOWED_UPWARD) <= seen, f"stale allow-list entries: {sorted(set(ALLOWED_UPWARD) - seen)}"


def test_the_facade_names_existing_functions():
    import histokd

    for name in histokd._API:
        assert callable(getattr(histokd, name)), name


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    from histokd.methods.base import METHODS\n", "histokd.methods.base"),
        ("import importlib\nimportlib.import_module('histokd.pipeline.tile')\n", "histokd.pipeline.tile"),
        ("import importlib\nimportlib.import_module(f'histokd.methods.{x}')\n", "histokd.methods"),
        ("from ..data import cohort\n", "histokd.data.cohort"),
        ("LAZY = {'mfl': 'histokd.features.mfl_encoder'}\n", "histokd.features.mfl_encoder"),
    ],
)
def test_the_walk_sees_every_kind_of_import(source: str, expected: str):
    assert expected in [name for _, name in imports_of(source, "histokd.slides.tiling", False)]


def test_the_walk_sees_verbs_called_through_the_facade():
    src = "def f(ws):\n    import histokd\n    histokd.embed(ws)\n    return histokd.__version__\n"
    assert verb_calls(src) == [(3, "histokd.embed")]
    assert verb_calls("from histokd import train\n") == [(1, "from histokd import train")]


# ------------------------------------------------------------------------------------------------------
# size limits (issue 14): a file over ~500 lines or a function over ~80 is split
# ------------------------------------------------------------------------------------------------------
MAX_FILE_LINES = 520
MAX_FUNCTION_LINES = 85


def oversized() -> list[str]:
    out: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parents[1])
        source = path.read_text(encoding="utf-8")
        n = len(source.splitlines())
        if n > MAX_FILE_LINES:
            out.append(f"{rel}: {n} lines (at most {MAX_FILE_LINES}); move a part into its own module")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{rel}:{node.lineno}: {node.name} is {length} lines (at most {MAX_FUNCTION_LINES}); "
                               f"extract helpers")
    return out


def test_no_file_or_function_is_too_long():
    too_long = oversized()
    assert not too_long, "too long:\n" + "\n".join(too_long)


# ------------------------------------------------------------------------------------------------------
# pixels through the dataset (issue 14): methods never open the cohort or a slide file themselves
# ------------------------------------------------------------------------------------------------------
PIXEL_DOORS = {"histokd.data.cohort", "histokd.slides.reader"}
PIXEL_NAMES = {"load_workspace_cohort", "read_cohort", "open_slide", "read_slide_image", "read_tile_images"}


def pixel_doors_in_methods() -> list[str]:
    out: list[str] = []
    for path in sorted((SRC / "methods").rglob("*.py")):
        rel = path.relative_to(SRC.parents[1])
        source = path.read_text(encoding="utf-8")
        module = module_name(path)
        out += [f"{rel}:{line}: imports {name}" for line, name in imports_of(source, module, path.name == "__init__.py")
                if name in PIXEL_DOORS]
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom):
                out += [f"{rel}:{node.lineno}: imports {a.name}" for a in node.names if a.name in PIXEL_NAMES]
    return out


def test_methods_read_slides_through_the_dataset():
    found = pixel_doors_in_methods()
    assert not found, "methods read slides through BagDataset.slide(i) (data/slide_source.py):\n" + "\n".join(found)


def test_the_pixel_door_check_can_fail(tmp_path, monkeypatch):
    bad = tmp_path / "histokd" / "methods"
    bad.mkdir(parents=True)
    (bad / "peek.py").write_text("def f(p):\n    from histokd.slides.reader import open_slide\n    return open_slide(p)\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "histokd")
    assert len(pixel_doors_in_methods()) == 2
