"""Training recipes, registered by name. Importing this package registers every built-in method."""

import importlib

from histokd.methods.base import (
    METHODS,
    Labeler,
    Method,
    Prediction,
    load_labeler,
    read_model_meta,
    register_method,
    write_model_meta,
)

# one module per method family; absent ones (not written yet / optional) are skipped
for _name in ("mil", "distill_to_label", "weno", "ifkd", "more_from_less", "vat"):
    try:
        importlib.import_module(f"histokd.methods.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"histokd.methods.{_name}":
            raise

__all__ = ["METHODS", "Labeler", "Method", "Prediction", "load_labeler", "read_model_meta", "register_method",
           "write_model_meta"]
