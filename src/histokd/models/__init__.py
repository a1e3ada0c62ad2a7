"""MIL models (``nn.Module`` only, no training code), all under the :class:`MILOutput` contract.

Importing this package registers every built-in model in :data:`MODELS`; build one with
``build_model(name, in_dim, n_classes, args)``.
"""

from histokd.models import abmil, chowder, clam, dsmil, pooling, transmil  # noqa: F401  (registration)
from histokd.models.base import MODELS, MILModel, MILOutput, build_model, full_mask, masked_softmax, register_model
from histokd.models.heads import InstanceMLP

__all__ = [
    "MODELS",
    "InstanceMLP",
    "MILModel",
    "MILOutput",
    "build_model",
    "full_mask",
    "masked_softmax",
    "register_model",
]
