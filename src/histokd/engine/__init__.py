"""Training engine: the one epoch loop (:func:`fit_epochs`) every method trains through, the MIL bag loop on
Lightning Fabric (:func:`fit_mil`: devices, precision, DDP), seeding, early stopping, checkpoints, logging."""

from histokd.engine.config import TrainerConfig
from histokd.engine.epochs import EarlyStopping, EpochResult, fit_epochs, stage_epochs
from histokd.engine.fabric import make_fabric, resolve_precision, seed_everything
from histokd.engine.loop import (
    BagOutput,
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
    "BagOutput", "EarlyStopping", "EpochResult", "FitResult", "TrainView", "TrainerConfig", "bag_loader", "class_weights",
    "evaluate_bags", "fit_epochs", "fit_mil", "log_to_file", "make_fabric", "make_optimizer", "predict_bag",
    "resolve_precision", "seed_everything", "stage_epochs",
]
