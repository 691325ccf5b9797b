"""Every setting of a training run, in one dataclass, and the presets that fill it.

Each field also says how ``fastlstm train`` offers it: an :class:`Option` in the field's
metadata (help text, flag, allowed values). :mod:`fastlstm.train.cli` builds its options,
and :meth:`TrainConfig.check` its range checks, from these, so a setting, its default, its
option and its help are written once, here.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fastlstm.backends import BACKENDS
from fastlstm.models.sentiment import POOLINGS, PRESETS, ModelSettings

__all__ = [
    "LR_SCHEDULES",
    "PRESET_TRAINING",
    "RESUMABLE_KEYS",
    "Option",
    "TrainConfig",
    "option",
    "parameter_count",
    "value_type",
]

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


@dataclass(frozen=True)
class Option:
    """How the command line offers one :class:`TrainConfig` field, and the values it allows.

    Attributes:
        help: what the setting does; ``--help`` adds its default (or each preset's value).
        group: the ``--help`` section of ``fastlstm train`` ("data", "model",
            "optimisation", "run"); "evaluate": offered by ``fastlstm evaluate`` only.
        flag: the option; default ``--`` and the field's name with dashes. A ``bool`` field's
            flag switches its default off (``--no-amp``) or on (``--low-memory``).
        metavar: the value's name in ``--help``.
        minimum: the smallest value allowed (integers).
        fraction: the value must lie in [0, 1).
        choices: the values allowed.
        both: a ``bool`` offered both ways, ``--x``/``--no-x`` (the presets differ in it).
        none: what ``None`` means, for ``--help`` ("off", "all").
        shown: the attribute ``--help`` shows as the value, when not the field itself.
        default_text: the default as ``--help`` states it, when the command line chooses it
            (``--device``) rather than the config.
        parser_default: the parser fills in the default: the command needs the value before
            it builds a config (``--out``, ``--preset``). Otherwise an option left out is
            None: the preset's value, or the saved run's on ``--resume``.
    """

    help: str
    group: str
    flag: str | None = None
    metavar: str | None = None
    minimum: int | None = None
    fraction: bool = False
    choices: tuple[str, ...] | None = None
    both: bool = False
    none: str | None = None
    shown: str | None = None
    default_text: str | None = None
    parser_default: bool = False


def _setting(default: Any, help: str, group: str, **option: Any) -> Any:
    """A :class:`TrainConfig` field with its :class:`Option`."""
    return field(default=default, metadata={"option": Option(help, group, **option)})


def _model(name: str, help: str, **option: Any) -> Any:
    """A :class:`~fastlstm.models.ModelSettings` field as a run has it: the default preset's."""
    return _setting(_DEFAULT[name], help, "model", **option)


@dataclass
class TrainConfig(ModelSettings):
    """Every setting of a training run; saved with the run so ``--resume`` can restore it.

    The model fields come from :class:`~fastlstm.models.ModelSettings` (declared again here
    with their options); every default is the ``"default"`` preset's, so ``TrainConfig()``
    equals ``TrainConfig.from_preset("default")``. :func:`option` gives a field's
    :class:`Option`.
    """

    embedding_dim: int = _model("embedding_dim", "embedding width", metavar="N", minimum=1)
    hidden_size: int = _model(
        "hidden_size", "LSTM hidden size per direction", metavar="N", minimum=1
    )
    num_layers: int = _model("num_layers", "stacked LSTM layers", metavar="N", minimum=1)
    bidirectional: bool = _model("bidirectional", "read each review in both directions", both=True)
    dropout: float = _model(
        "dropout",
        "dropout between layers and before the head, and on the embeddings unless "
        "--embedding-dropout is given",
        metavar="P",
        fraction=True,
    )
    embedding_dropout: float | None = _model(
        "embedding_dropout",
        "element-wise dropout on the embeddings",
        metavar="P",
        fraction=True,
        shown="effective_embedding_dropout",
    )
    token_dropout: float = _model(
        "token_dropout",
        "probability of zeroing a whole token's embedding in training",
        metavar="P",
        fraction=True,
    )
    pooling: str = _model(
        "pooling",
        "review vector: last hidden state, max or mean over time, or max and mean",
        choices=POOLINGS,
    )
    backend: str = _model(
        "backend", "LSTM backend; auto: triton on CUDA, aten on CPU", choices=BACKENDS
    )
    data: str | None = _setting(None, "aclImdb folder or .tar.gz archive", "data", metavar="PATH")
    cache_dir: str | None = _setting(
        None,
        "cache for the download and the encoded corpus",
        "data",
        metavar="DIR",
        default_text="$FASTLSTM_CACHE or ~/.cache/fastlstm",
    )
    vocab_max_size: int | None = _setting(
        _DEFAULT["vocab_max_size"],
        "most frequent words kept, besides <pad> and <unk>",
        "data",
        flag="--vocab-size",
        metavar="N",
        minimum=1,
        none="all",
    )
    min_freq: int = _setting(
        1, "drop words seen fewer than N times in training", "data", metavar="N", minimum=1
    )
    max_length: int | None = _setting(
        None,
        "keep only the first N tokens of each review",
        "data",
        metavar="N",
        minimum=1,
        none="all",
    )
    val_fraction: float = _setting(
        0.1,
        "share of the training reviews held out for validation",
        "data",
        metavar="F",
        fraction=True,
    )
    preset: str = _setting(
        "default", "model size and epochs", "model", choices=tuple(PRESETS), parser_default=True
    )
    epochs: int = _setting(_DEFAULT["epochs"], "epochs", "optimisation", metavar="N", minimum=1)
    batch_size: int = _setting(
        64, "reviews per batch, per process", "optimisation", metavar="N", minimum=1
    )
    lr: float = _setting(2e-3, "Adam learning rate", "optimisation", metavar="LR")
    lr_schedule: str = _setting(
        "constant",
        "constant learning rate, or cosine decay to zero over all epochs",
        "optimisation",
        choices=LR_SCHEDULES,
    )
    clip: float = _setting(
        30.0, "gradient-norm clipping threshold, 0 to disable", "optimisation", metavar="NORM"
    )
    patience: int | None = _setting(
        None,
        "stop after N epochs without a better validation accuracy",
        "optimisation",
        metavar="N",
        minimum=1,
        none="off",
    )
    average_last: int | None = _setting(
        _DEFAULT["average_last"],
        "keep the mean of the weights at the end of the last N epochs instead of the best "
        "epoch's; 0 keeps the best epoch",
        "optimisation",
        metavar="N",
        minimum=0,
        none="off",
    )
    seed: int = _setting(
        0, "seed for initialisation, split and batch order", "optimisation", metavar="N"
    )
    out: str = _setting(
        "runs/imdb",
        "run folder for checkpoint, metrics and plots",
        "run",
        metavar="DIR",
        parser_default=True,
    )
    device: str = _setting(
        "cpu",
        "cpu, cuda or cuda:N",
        "run",
        metavar="DEV",
        default_text="cuda when available, else cpu",
    )
    threads: int | None = _setting(
        None, "CPU threads for PyTorch", "run", metavar="N", minimum=1, none="PyTorch's choice"
    )
    amp: bool = _setting(True, "disable bf16 autocast (used on CUDA only)", "run")
    evaluate_test: bool = _setting(
        True, "skip scoring the kept model on the test split at the end", "run", flag="--no-test"
    )

    progress: bool = _setting(
        True,
        "no progress bars (bars are drawn on a terminal only; epoch lines are still printed)",
        "run",
    )
    log_every: int = _setting(
        50,
        "steps between reads of the running loss and accuracy for the progress bar (under "
        "torchrun also between checks for Ctrl-C); each read waits for the GPU to finish the "
        "queued steps",
        "run",
        metavar="N",
        minimum=1,
    )
    # On the CPU, hand freed large blocks back to the system (glibc's way) instead of keeping
    # them in the heap for the next step: a lower peak, slower epochs (docs/training.md).
    low_memory: bool = _setting(
        False,
        "on the CPU, give freed large blocks back to the system instead of keeping them for "
        "the next step: less memory, slower epochs (default IMDB run: 4.0 instead of 5.9 GB "
        "peak, 11 instead of 9 minutes)",
        "run",
    )
    eval_batch_size: int = _setting(
        256,
        "reviews per batch",
        "evaluate",
        flag="--batch-size",
        metavar="N",
        minimum=1,
        parser_default=True,
    )

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range (the options' limits)."""
        super().check()
        for f in fields(self):
            value, opt = getattr(self, f.name), option(f.name)
            if value is None and _optional(f.name):
                continue
            alone = "" if not _optional(f.name) else " or None"
            if opt.choices is not None and value not in opt.choices:
                raise ValueError(f"{f.name} must be one of {opt.choices}, got {value!r}")
            if opt.minimum is not None and not value >= opt.minimum:
                raise ValueError(f"{f.name} must be >= {opt.minimum}{alone}, got {value}")
            if opt.fraction and not 0.0 <= value < 1.0:
                raise ValueError(f"{f.name} must be in [0, 1){alone}, got {value}")

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


def option(name: str) -> Option:
    """The :class:`Option` of :class:`TrainConfig` field ``name``."""
    metadata = _FIELDS[name].metadata
    try:
        return metadata["option"]
    except KeyError:
        # A ModelSettings field TrainConfig does not declare again with its option.
        raise TypeError(
            f"TrainConfig.{name} has no Option: declare it in fastlstm/train/config.py"
        ) from None


def value_type(name: str) -> type:
    """The type of :class:`TrainConfig` field ``name``'s values (``int`` for ``int | None``)."""
    return next(t for t in typing.get_args(_HINTS[name]) or (_HINTS[name],) if t is not type(None))


def _optional(name: str) -> bool:
    return type(None) in typing.get_args(_HINTS[name])


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def parameter_count(settings: ModelSettings, vocab_size: int) -> int:
    """Parameters of the :class:`~fastlstm.models.SentimentClassifier` that ``settings`` and
    a vocabulary of ``vocab_size`` build, counted without building it.

    Embedding table, then per layer and direction the LSTM's four gates (input and
    recurrent weights, two biases), then the linear head on the pooled features.
    """
    s = settings
    directions = 2 if s.bidirectional else 1
    lstm = 0
    for layer in range(s.num_layers):
        inputs = s.embedding_dim if layer == 0 else directions * s.hidden_size
        lstm += directions * 4 * s.hidden_size * (inputs + s.hidden_size + 2)
    features = directions * s.hidden_size * (2 if s.pooling == "max_mean" else 1)
    return vocab_size * s.embedding_dim + lstm + features + 1
