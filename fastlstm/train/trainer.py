"""Deprecated home of the trainer: the names now live in the modules listed below.

Kept so that ``from fastlstm.train.trainer import ...`` keeps working; import from
:mod:`fastlstm.train` (or :mod:`~fastlstm.train.config`, :mod:`~fastlstm.train.datasets`,
:mod:`~fastlstm.train.loop`, :mod:`~fastlstm.train.metrics`) instead.
"""

from fastlstm.train.config import LR_SCHEDULES, PRESET_TRAINING, TrainConfig
from fastlstm.train.datasets import Datasets, build_datasets
from fastlstm.train.distributed import local_rank_device
from fastlstm.train.loop import Trainer, evaluate, seconds_to_text
from fastlstm.train.metrics import plot_history
from fastlstm.train.run_folder import RESUME_DIR

__all__ = [
    "LR_SCHEDULES",
    "PRESET_TRAINING",
    "RESUME_DIR",
    "Datasets",
    "TrainConfig",
    "Trainer",
    "build_datasets",
    "evaluate",
    "local_rank_device",
    "plot_history",
    "seconds_to_text",
]
