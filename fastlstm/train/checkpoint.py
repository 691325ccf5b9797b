"""Checkpoints as safetensors weights + JSON metadata; never pickle.

Two kinds, both inside a run folder (:class:`~fastlstm.train.run_folder.RunFolder` names
the files):

- the model: ``model.safetensors`` + ``model.json`` (the config that rebuilds it, its
  vocabulary, metrics). All ``evaluate``/``predict`` need; :func:`save_model`/:func:`load_model`.
- the training state under ``resume/``: weights, Adam state, RNG states and ``state.json``
  (config, vocabulary, position, history), written at every epoch end and on Ctrl-C;
  :func:`save_training_state`/:func:`load_training_state`, and :func:`read_training_config`
  for ``--resume``'s settings.

Every file is written to a temporary name and renamed, so an interrupted write never
replaces a good file with half of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from fastlstm.data.text import Vocab
from fastlstm.models.sentiment import SentimentClassifier
from fastlstm.train.config import TrainConfig
from fastlstm.train.run_folder import RunFolder

__all__ = [
    "CheckpointError",
    "TrainingState",
    "check_state_dict",
    "load_model",
    "load_optimizer_state",
    "load_training_state",
    "optimizer_state_tensors",
    "read_json",
    "read_tensors",
    "read_training_config",
    "save_model",
    "save_training_state",
    "vocab_from_json",
    "vocab_to_json",
    "write_json",
    "write_tensors",
]

FORMAT = "fastlstm.sentiment"
FORMAT_VERSION = 1
STATE_FORMAT = "fastlstm.train-state"
STATE_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit; the message says which and why."""


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def write_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # Serialised in memory and written with the user's umask (save_file makes files 0600).
    tmp.write_bytes(save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} not found; is this a fastlstm run folder?") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt ({err}); use another checkpoint") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is corrupt (not a JSON object); use another checkpoint")
    return obj


def read_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} not found; is this a fastlstm run folder?") from err
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt ({err}); use another checkpoint") from err


def vocab_to_json(vocab: Vocab) -> dict[str, Any]:
    """The vocabulary's entries in a checkpoint's JSON: its tokens and their fingerprint."""
    return {"vocab": vocab.itos, "vocab_fingerprint": vocab.fingerprint()}


def vocab_from_json(meta: dict[str, Any], where: Path) -> Vocab:
    """Inverse of :func:`vocab_to_json`: the one way checkpoints read a vocabulary back."""
    tokens = meta.get("vocab")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(f"{where} is corrupt (its vocabulary is not a list of words)")
    try:
        vocab = Vocab(tokens)
    except ValueError as err:
        raise CheckpointError(f"{where} is corrupt ({err})") from err
    if vocab.fingerprint() != meta.get("vocab_fingerprint"):
        raise CheckpointError(
            f"{where}: the vocabulary does not match the one the weights were "
            "trained with (fingerprint differs); restore the original file"
        )
    return vocab


def save_model(
    folder: str | os.PathLike, model: SentimentClassifier, vocab: Vocab, extra: dict[str, Any]
) -> None:
    """Write ``model.safetensors`` and ``model.json`` (config, vocabulary, ``extra``)."""
    run = RunFolder(folder)
    write_tensors(run.model_weights, model.state_dict())
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": model.config,
        **vocab_to_json(vocab),
        **extra,
    }
    write_json(run.model_meta, meta)


def _resolve(path: str | os.PathLike) -> RunFolder:
    p = Path(path)
    if p.is_dir():
        return RunFolder(p)
    if p.name in (RunFolder.MODEL_WEIGHTS, RunFolder.MODEL_META) and p.parent.is_dir():
        return RunFolder(p.parent)
    raise CheckpointError(
        f"checkpoint {p} not found; pass the run folder written by 'fastlstm train --out'"
    )


def load_model(
    path: str | os.PathLike, backend: str | None = None
) -> tuple[SentimentClassifier, Vocab, dict]:
    """Rebuild the model saved in run folder ``path``; returns ``(model, vocab, metadata)``.

    Checks that the metadata is a fastlstm sentiment checkpoint, that the vocabulary is the
    one the weights were trained with, and that every weight has the shape the config
    implies. ``backend`` overrides the saved LSTM backend.
    """
    run = _resolve(path)
    meta = read_json(run.model_meta)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{run.model_meta} is not a fastlstm sentiment checkpoint "
            f"(format {meta.get('format')!r}, expected {FORMAT!r})"
        )
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{run.model_meta} has format version {meta.get('version')}, this fastlstm "
            f"reads version {FORMAT_VERSION}; use a matching fastlstm release"
        )
    try:
        config = dict(meta["model"])
        if backend is not None:
            config["backend"] = backend
        model = SentimentClassifier.from_config(config)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{run.model_meta} is corrupt ({err})") from err
    vocab = vocab_from_json(meta, run.model_meta)
    if len(vocab) != config["vocab_size"]:
        raise CheckpointError(
            f"{run.model_meta}: vocabulary has {len(vocab)} entries but the model expects "
            f"{config['vocab_size']}; the files come from different runs"
        )
    state = read_tensors(run.model_weights)
    check_state_dict(model, state, run.model_weights)
    model.load_state_dict(state)
    return model, vocab, meta


def _new_partial() -> dict[str, float]:
    return {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0, "cpu_seconds": 0.0}


@dataclass
class TrainingState:
    """Where a run stands, besides its tensors: what ``resume/state.json`` holds.

    Attributes:
        epoch, step: the next batch is number ``step`` of epoch ``epoch`` (both from 0).
        history: one row of metrics per finished epoch.
        best: the best epoch so far (``score``, ``val_accuracy``, ``epoch`` from 1; 0: none).
        stale_epochs: epochs since ``best`` improved (for early stopping).
        partial: running sums of the unfinished epoch.
        snapshots: the weights at the end of the latest epochs, by epoch (from 1), for
            ``average_last``; saved in ``resume/snapshots.safetensors``.
    """

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(
        default_factory=lambda: {"score": None, "val_accuracy": None, "epoch": 0}
    )
    stale_epochs: int = 0
    partial: dict[str, float] = field(default_factory=_new_partial)
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)

    def next_epoch(self) -> None:
        self.epoch, self.step, self.partial = self.epoch + 1, 0, _new_partial()


def save_training_state(
    folder: str | os.PathLike,
    config: TrainConfig,
    vocab: Vocab,
    state: TrainingState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Write ``resume/``: weights, optimizer, RNG states and ``state.json``."""
    run = RunFolder(folder)
    run.resume.mkdir(parents=True, exist_ok=True)
    opt_tensors, opt_meta = optimizer_state_tensors(optimizer)
    device = next(model.parameters()).device
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    write_tensors(run.resume_weights, model.state_dict())
    write_tensors(run.resume_optimizer, opt_tensors)
    write_tensors(run.resume_rng, rng)
    write_tensors(
        run.resume_snapshots,
        {f"{epoch}/{name}": t for epoch, ts in state.snapshots.items() for name, t in ts.items()},
    )
    write_json(
        run.resume_state,
        {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": config.to_dict(),
            **vocab_to_json(vocab),
            "epoch": state.epoch,
            "step": state.step,
            "history": state.history,
            "best": state.best,
            "stale_epochs": state.stale_epochs,
            "partial": state.partial,
            "optimizer": opt_meta,
        },
    )


def _read_state(run: RunFolder) -> dict[str, Any]:
    if not run.resume_state.is_file():
        raise CheckpointError(
            f"no saved run in {run.path} ({run.resume_state} missing); "
            "check --out, or start a new run without --resume"
        )
    meta = read_json(run.resume_state)
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{run.resume_state} is not a fastlstm training state")
    return meta


def read_training_config(folder: str | os.PathLike) -> tuple[TrainConfig, Vocab]:
    """The settings and vocabulary of the run saved in ``folder`` (for ``--resume``)."""
    run = RunFolder(folder)
    meta = _read_state(run)
    try:
        config = TrainConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{run.resume_state} is corrupt ({err}); start a new run") from err
    return config, vocab_from_json(meta, run.resume_state)


def load_training_state(
    folder: str | os.PathLike,
    vocab: Vocab,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> TrainingState:
    """Restore model, optimizer and RNG states from ``resume/``; returns the position."""
    run = RunFolder(folder)
    meta = _read_state(run)
    if vocab_from_json(meta, run.resume_state) != vocab:
        raise CheckpointError(
            f"{run.resume}: the saved vocabulary differs from this run's; resume with the "
            "vocabulary stored in the run (fastlstm train --resume does this)"
        )
    weights = read_tensors(run.resume_weights)
    check_state_dict(model, weights, run.resume_weights)
    model.load_state_dict(weights)
    device = next(model.parameters()).device
    try:
        load_optimizer_state(optimizer, read_tensors(run.resume_optimizer), meta["optimizer"])
        rng = read_tensors(run.resume_rng)
        state = TrainingState(
            epoch=int(meta["epoch"]),
            step=int(meta["step"]),
            history=list(meta["history"]),
            best=dict(meta["best"]),
            stale_epochs=int(meta["stale_epochs"]),
            partial={key: float(meta["partial"][key]) for key in _new_partial()},
        )
        for key, tensor in read_tensors(run.resume_snapshots).items():
            epoch, name = key.split("/", 1)
            state.snapshots.setdefault(int(epoch), {})[name] = tensor.to(device)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{run.resume} is corrupt ({err}); start a new run") from err
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    return state


def check_state_dict(model: torch.nn.Module, state: dict[str, Tensor], where: Path) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``model``'s names/shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = expected.keys() - got.keys(), got.keys() - expected.keys()
    if missing or unexpected:
        raise CheckpointError(
            f"{where} does not fit the model in its config (missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}); the files come from different runs"
        )
    for k, shape in expected.items():
        if got[k] != shape:
            raise CheckpointError(
                f"{where}: {k} has shape {list(got[k])}, the config implies {list(shape)}; "
                "the weights come from a model of another shape or vocabulary"
            )


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Split an optimizer's state_dict into tensors (for safetensors) and JSON metadata."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict
) -> None:
    """Inverse of :func:`optimizer_state_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
