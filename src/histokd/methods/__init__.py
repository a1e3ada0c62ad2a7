"""Training recipes, registered by name. Importing this package registers every built-in method."""

from histokd.methods.base import METHODS, Labeler, Method, Prediction, register_method

__all__ = ["METHODS", "Labeler", "Method", "Prediction", "register_method"]
