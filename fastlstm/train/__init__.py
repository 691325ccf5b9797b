"""Training, evaluation and checkpoints for the IMDB sentiment classifier.

One job per module, in the order a run uses them:

- :mod:`~fastlstm.train.config`: :class:`TrainConfig`, every setting of a run, and the presets;
- :mod:`~fastlstm.train.datasets`: the train/validation/test split, vocabulary and encoding;
- :mod:`~fastlstm.train.loop`: :class:`Trainer` and :func:`evaluate`
  (:mod:`~fastlstm.train.distributed` for torchrun);
- :mod:`~fastlstm.train.run_folder`, :mod:`~fastlstm.train.checkpoint`,
  :mod:`~fastlstm.train.metrics`: what a run writes, and reading it back;
- :mod:`~fastlstm.train.predict`: scoring review text with a trained model;
- :mod:`~fastlstm.train.cli`: ``fastlstm train|evaluate|predict``, parsing and reporting only.
"""

from fastlstm.train.checkpoint import CheckpointError, load_model, save_model
from fastlstm.train.config import TrainConfig
from fastlstm.train.datasets import Datasets, build_datasets
from fastlstm.train.loop import Trainer, evaluate
from fastlstm.train.metrics import plot_history
from fastlstm.train.predict import ReviewError, predict_texts
from fastlstm.train.run_folder import RunFolder

__all__ = [
    "CheckpointError",
    "Datasets",
    "ReviewError",
    "RunFolder",
    "TrainConfig",
    "Trainer",
    "build_datasets",
    "evaluate",
    "load_model",
    "plot_history",
    "predict_texts",
    "save_model",
]
