"""The layout of a run folder (``fastlstm train --out``): every file name, defined once.

::

    model.safetensors, model.json   the kept weights (the best epoch's, or the average of the
                                    last epochs'); their config, vocabulary, metrics
    metrics.csv, metrics.json       one row per epoch; metrics.json adds the result and config
    curves.png                      loss and accuracy per epoch
    resume/                         the latest training state, read by --resume:
        weights.safetensors, optimizer.safetensors, rng.safetensors, state.json,
        snapshots.safetensors (the epoch-end weights kept for --average-last)

``model.*`` is all ``evaluate``/``predict`` need (:mod:`fastlstm.train.checkpoint` writes and
reads it, and the ``resume/`` state); the metrics and curves are for people.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["RESUME_DIR", "RunExistsError", "RunFolder"]

RESUME_DIR = "resume"


class RunExistsError(FileExistsError):
    """A new run was asked for in a folder that already holds one."""


class RunFolder:
    """Paths inside the run folder ``path`` (nothing is created until something is written)."""

    MODEL_WEIGHTS = "model.safetensors"
    MODEL_META = "model.json"
    METRICS_CSV = "metrics.csv"
    METRICS_JSON = "metrics.json"
    CURVES = "curves.png"
    RESUME_DIR = RESUME_DIR
    RESUME_WEIGHTS = "weights.safetensors"
    RESUME_OPTIMIZER = "optimizer.safetensors"
    RESUME_RNG = "rng.safetensors"
    RESUME_STATE = "state.json"
    RESUME_SNAPSHOTS = "snapshots.safetensors"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def model_weights(self) -> Path:
        return self.path / self.MODEL_WEIGHTS

    @property
    def model_meta(self) -> Path:
        return self.path / self.MODEL_META

    @property
    def metrics_csv(self) -> Path:
        return self.path / self.METRICS_CSV

    @property
    def metrics_json(self) -> Path:
        return self.path / self.METRICS_JSON

    @property
    def curves(self) -> Path:
        return self.path / self.CURVES

    @property
    def resume(self) -> Path:
        return self.path / self.RESUME_DIR

    @property
    def resume_weights(self) -> Path:
        return self.resume / self.RESUME_WEIGHTS

    @property
    def resume_optimizer(self) -> Path:
        return self.resume / self.RESUME_OPTIMIZER

    @property
    def resume_rng(self) -> Path:
        return self.resume / self.RESUME_RNG

    @property
    def resume_state(self) -> Path:
        return self.resume / self.RESUME_STATE

    @property
    def resume_snapshots(self) -> Path:
        return self.resume / self.RESUME_SNAPSHOTS

    def _written(self) -> list[Path]:
        """Everything ``fastlstm train`` writes here (the resume folder as one entry)."""
        return [
            self.model_weights,
            self.model_meta,
            self.metrics_csv,
            self.metrics_json,
            self.curves,
            self.resume,
        ]

    def existing_run(self) -> list[str]:
        """Names of the files that mark a run already here (empty when there is none)."""
        marks = (self.model_meta, self.model_weights, self.resume)
        return [p.name for p in marks if p.exists()]

    def check_new(self, force: bool = False) -> None:
        """Raise :class:`RunExistsError` when a run is here and ``force`` is not given."""
        existing = self.existing_run()
        if existing and not force:
            raise RunExistsError(
                f"{self.path} already holds a run ({', '.join(existing)}); pass --resume to "
                "continue it, --force to replace it, or choose another --out"
            )

    def remove_run(self) -> None:
        """Delete what a previous run wrote here (only the files ``train`` writes)."""
        for p in self._written():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
