"""Every setting of a training run, in one dataclass, and the presets that fill it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from fastlstm.models.sentiment import PRESETS, ModelSettings

__all__ = ["LR_SCHEDULES", "PRESET_TRAINING", "RESUMABLE_KEYS", "TrainConfig"]

LR_SCHEDULES = ("constant", "cosine")
# Training settings that go with each model preset (measured in docs/training.md); a preset
# is PRESETS[name] (vocabulary + architecture) plus this.
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "exercise": {"epochs": 12, "average_last": None},
    "default": {"epochs": 8, "average_last": 4},
}
# What ``--resume`` may change in a saved run: where the data lives, how long to train and
# how to show and run it. Everything else (model, optimiser, seed, split) is the run's own.
RESUMABLE_KEYS = (
    "data",
    "cache_dir",
    "epochs",
    "progress",
    "log_every",
    "threads",
    "low_memory",
    "device",
)

_DEFAULT = {**PRESETS["default"], **PRESET_TRAINING["default"]}


@dataclass
class TrainConfig(ModelSettings):
    """Every setting of a training run; saved with the run so ``--resume`` can restore it.

    The model fields come from :class:`~fastlstm.models.ModelSettings`; every default is
    the ``"default"`` preset's, so ``TrainConfig()`` equals ``TrainConfig.from_preset("default")``.
    """

    data: str | None = None
    out: str = "runs/imdb"
    preset: str = "default"
    embedding_dropout: float | None = _DEFAULT["embedding_dropout"]
    token_dropout: float = _DEFAULT["token_dropout"]
    vocab_max_size: int | None = _DEFAULT["vocab_max_size"]
    min_freq: int = 1
    max_length: int | None = None
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 2e-3
    lr_schedule: str = "constant"
    clip: float = 30.0
    epochs: int = _DEFAULT["epochs"]
    val_fraction: float = 0.1
    patience: int | None = None
    average_last: int | None = _DEFAULT["average_last"]
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    threads: int | None = None
    # On the CPU, hand freed large blocks back to the system (glibc's way) instead of keeping
    # them in the heap for the next step: a lower peak, slower epochs (docs/training.md).
    low_memory: bool = False
    cache_dir: str | None = None
    progress: bool = True
    # Steps between reads of the running loss and accuracy to the host (for the progress
    # bar; under torchrun also the steps at which the ranks agree on a Ctrl-C). Each read waits
    # for the device to finish the queued steps, so the trainer does not read every step.
    log_every: int = 50
    evaluate_test: bool = True

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        super().check()
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.vocab_max_size is not None and self.vocab_max_size < 1:
            raise ValueError(f"vocab_max_size must be >= 1 or None, got {self.vocab_max_size}")
        for name in ("batch_size", "eval_batch_size", "epochs", "min_freq", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if self.average_last is not None and self.average_last < 0:
            raise ValueError(f"average_last must be >= 0 (0 or None: off), got {self.average_last}")

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> TrainConfig:
        """The config of preset ``preset`` with ``overrides`` applied."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
        return cls(**{"preset": preset, **PRESETS[preset], **PRESET_TRAINING[preset], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config saved as :meth:`to_dict`; ``ValueError`` unless ``d`` has every setting
        and nothing else (a saved run restores exactly the settings it trained with)."""
        names = {f.name for f in fields(cls)}
        missing, unknown = sorted(names - d.keys()), sorted(d.keys() - names)
        if missing or unknown:
            raise ValueError(f"not a saved TrainConfig (missing {missing}, unknown {unknown})")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resumed(self, overrides: dict[str, Any]) -> TrainConfig:
        """This saved config with the :data:`RESUMABLE_KEYS` among ``overrides`` applied."""
        return TrainConfig.from_dict(
            {**self.to_dict(), **{k: v for k, v in overrides.items() if k in RESUMABLE_KEYS}}
        )
