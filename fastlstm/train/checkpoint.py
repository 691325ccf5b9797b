"""Checkpoints as safetensors weights + JSON metadata; never pickle.

A run folder holds:

- ``model.safetensors`` + ``model.json``: the best model's weights, and the config that
  rebuilds it, its vocabulary and its metrics. This pair is all ``evaluate``/``predict`` need.
- ``resume/``: the latest training state (``weights.safetensors``, ``optimizer.safetensors``,
  ``state.json`` with epoch, step, history and RNG states), written at every epoch end and
  on Ctrl-C, read by ``--resume``.

Every file is written to a temporary name and renamed, so an interrupted write never
replaces a good file with half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from fastlstm.data.text import Vocab
from fastlstm.models.sentiment import SentimentClassifier

__all__ = [
    "CheckpointError",
    "load_model",
    "load_optimizer_state",
    "optimizer_state_tensors",
    "read_json",
    "save_model",
    "write_json",
    "write_tensors",
]

FORMAT = "fastlstm.sentiment"
FORMAT_VERSION = 1
MODEL_WEIGHTS, MODEL_META = "model.safetensors", "model.json"


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


def save_model(
    folder: Path, model: SentimentClassifier, vocab: Vocab, extra: dict[str, Any]
) -> None:
    """Write ``model.safetensors`` and ``model.json`` (config, vocabulary, ``extra``)."""
    write_tensors(folder / MODEL_WEIGHTS, model.state_dict())
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": model.config,
        "vocab": vocab.itos,
        "vocab_fingerprint": vocab.fingerprint(),
        **extra,
    }
    write_json(folder / MODEL_META, meta)


def _resolve(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        return p
    if p.name in (MODEL_WEIGHTS, MODEL_META) and p.parent.is_dir():
        return p.parent
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
    folder = _resolve(path)
    meta = read_json(folder / MODEL_META)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{folder / MODEL_META} is not a fastlstm sentiment checkpoint "
            f"(format {meta.get('format')!r}, expected {FORMAT!r})"
        )
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{folder / MODEL_META} has format version {meta.get('version')}, this fastlstm "
            f"reads version {FORMAT_VERSION}; use a matching fastlstm release"
        )
    try:
        vocab = Vocab(meta["vocab"])
        config = dict(meta["model"])
        if backend is not None:
            config["backend"] = backend
        model = SentimentClassifier.from_config(config)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / MODEL_META} is corrupt ({err})") from err
    if vocab.fingerprint() != meta.get("vocab_fingerprint"):
        raise CheckpointError(
            f"{folder / MODEL_META}: the vocabulary does not match the one the weights were "
            "trained with (fingerprint differs); restore the original model.json"
        )
    if len(vocab) != config["vocab_size"]:
        raise CheckpointError(
            f"{folder / MODEL_META}: vocabulary has {len(vocab)} entries but the model expects "
            f"{config['vocab_size']}; the files come from different runs"
        )
    state = read_tensors(folder / MODEL_WEIGHTS)
    check_state_dict(model, state, folder / MODEL_WEIGHTS)
    model.load_state_dict(state)
    return model, vocab, meta


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
