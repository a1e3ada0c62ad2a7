"""histokd: slide-level labels to instance-level knowledge in histopathology.

The public API mirrors the CLI verbs: ``histokd.synth``, ``histokd.tile``, ``histokd.embed``,
``histokd.train``, ``histokd.label``, ``histokd.report``, ``histokd.bench``, ``histokd.demo``.
They are imported lazily so that ``import histokd`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# verb -> "module:function"
_API = {
    "synth": "histokd.synth.generate:synth",
    "tile": "histokd.slides.tiling:tile",
    "embed": "histokd.features.extract:embed",
    "import_features": "histokd.features.importer:import_features",
    "train": "histokd.methods.train:train",
    "label": "histokd.methods.label:label",
    "report": "histokd.outputs.report:report",
    "bench": "histokd.evaluate.bench:bench",
    "train_encoder": "histokd.methods.more_from_less:train_encoder",
    "demo": "histokd._demo:demo",
    "open_slide": "histokd.slides.reader:open_slide",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        mod, fn = _API[name].split(":")
        return getattr(importlib.import_module(mod), fn)
    raise AttributeError(f"module 'histokd' has no attribute {name!r}")
