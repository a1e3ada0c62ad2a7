"""Training engine on Lightning Fabric: devices, precision, seeding, early stopping, checkpoints, logging."""

from histokd.engine.config import TrainerConfig
from histokd.engine.fabric import make_fabric, resolve_precision, seed_everything
from histokd.engine.loop import (
    BagOutput,
    EarlyStopping,
    FitResult,
    TrainView,
    bag_loader,
    class_weights,
    evaluate_bags,
    fit_mil,
    log_to_file,
    make_optimizer,
    predict_bag,
)

__all__ = [
    "BagOutput", "EarlyStopping", "FitResult", "TrainView", "TrainerConfig", "bag_loader", "class_weights",
    "evaluate_bags", "fit_mil", "log_to_file", "make_fabric", "make_optimizer", "predict_bag",
    "resolve_precision", "seed_everything",
]
