"""histokd: slide-level labels to instance-level knowledge in histopathology.

The public API mirrors the CLI verbs: ``histokd.synth``, ``histokd.tile``, ``histokd.embed``,
``histokd.train``, ``histokd.label``, ``histokd.report``, ``histokd.predict``, ``histokd.export_model``,
``histokd.bench``, ``histokd.demo``.
They are imported lazily so that ``import histokd`` stays cheap. The verbs live in
:mod:`histokd.pipeline` (``synth``, ``import_features`` and ``open_slide`` in their
library packages); this facade is the one module outside the pipeline that may name them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# verb -> "module:function"
_API = {
    "synth": "histokd.synth.generate:synth",
    "tile": "histokd.pipeline.tile:tile",
    "embed": "histokd.pipeline.embed:embed",
    "import_features": "histokd.features.importer:import_features",
    "train": "histokd.pipeline.train:train",
    "label": "histokd.pipeline.label:label",
    "report": "histokd.pipeline.report:report",
    "predict": "histokd.pipeline.predict:predict",
    "export_model": "histokd.pipeline.bundle:export_model",
    "bench": "histokd.pipeline.bench:bench",
    "train_encoder": "histokd.pipeline.train_encoder:train_encoder",
    "demo": "histokd.pipeline.demo:demo",
    "open_slide": "histokd.slides.reader:open_slide",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        mod, fn = _API[name].split(":")
        return getattr(importlib.import_module(mod), fn)
    raise AttributeError(f"module 'histokd' has no attribute {name!r}")
