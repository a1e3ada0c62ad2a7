"""Synthetic Camelyon16-style cohorts: H&E pyramids, paired multiplex images, tumour masks, labels.

``histokd.synth(...)`` is the public verb (see :func:`histokd.synth.generate.synth`). Because the verb and
this subpackage share a name, importing any ``histokd.synth.*`` module rebinds ``histokd.synth`` to this
package; the package is therefore made callable, so ``histokd.synth(out, ...)`` works either way.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        from histokd.synth.generate import synth

        return synth(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
