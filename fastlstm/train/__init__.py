"""Training, evaluation and checkpoints for the IMDB sentiment classifier."""

from fastlstm.train.checkpoint import CheckpointError, load_model, save_model
from fastlstm.train.trainer import TrainConfig, Trainer, build_datasets, evaluate, plot_history

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "Trainer",
    "build_datasets",
    "evaluate",
    "load_model",
    "plot_history",
    "save_model",
]
