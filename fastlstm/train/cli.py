"""``fastlstm train``, ``fastlstm evaluate`` and ``fastlstm predict``: parse, check, report.

The ``train`` options are generated from :class:`~fastlstm.train.config.TrainConfig`'s
fields: each field's :class:`~fastlstm.train.config.Option` gives the flag, the value's
type or choices and the help, whose defaults (or each preset's value) are read from the
config and the presets. ``dest`` is the field's name; an option left out is None, meaning
"the preset's value" (the saved run's on ``--resume``). The work is done by the library:
:mod:`fastlstm.train.datasets`, :mod:`~fastlstm.train.loop`,
:mod:`~fastlstm.train.checkpoint`, :mod:`~fastlstm.train.predict`.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from fastlstm import BACKENDS, select_backend
from fastlstm.data import Corpus, DataError, Vocab, load_corpus, resolve_imdb
from fastlstm.errors import CLIError
from fastlstm.models.sentiment import PRESETS
from fastlstm.train.checkpoint import CheckpointError, load_model, read_training_config
from fastlstm.train.config import (
    PRESET_TRAINING,
    RESUMABLE_KEYS,
    TrainConfig,
    option,
    parameter_count,
    value_type,
)
from fastlstm.train.datasets import build_datasets, encode_split, split_indices
from fastlstm.train.distributed import (
    destroy_distributed,
    init_distributed,
    launched_rank,
    local_rank_device,
)
from fastlstm.train.loop import Trainer, evaluate, seconds_to_text
from fastlstm.train.predict import ReviewError, predict_texts
from fastlstm.train.run_folder import RunExistsError, RunFolder

__all__ = ["add_parser", "add_setting"]

_DEFAULTS = TrainConfig()
# The ``--help`` sections of ``fastlstm train``, by Option.group.
_GROUPS = {
    "data": "data",
    "model": "model (defaults come from --preset)",
    "optimisation": "optimisation",
    "run": "run",
}


def _preset_summary(name: str) -> str:
    """``"bidirectional LSTM 64, embedding 64, max pooling, token dropout 0.25, vocabulary
    10,000: 706,817 parameters, 8 epochs, mean of the last 4"`` for preset ``name``, from the
    preset itself (the size counted, not built)."""
    p = PRESETS[name]
    size = parameter_count(TrainConfig.from_preset(name), p["vocab_max_size"] + 2)
    layers = f"{p['num_layers']}-layer " if p["num_layers"] > 1 else ""
    kind = "bidirectional " if p["bidirectional"] else ""
    tokens = f", token dropout {p['token_dropout']:g}" if p["token_dropout"] else ""
    training = PRESET_TRAINING[name]
    averaged = f", mean of the last {training['average_last']}" if training["average_last"] else ""
    return (
        f"{layers}{kind}LSTM {p['hidden_size']}, embedding {p['embedding_dim']}, "
        f"{p['pooling'].replace('_', '+')} pooling{tokens}, vocabulary "
        f"{p['vocab_max_size']:,}: {size:,} parameters, {training['epochs']} epochs{averaged}"
    )


def _train_description() -> str:
    def para(text: str) -> str:
        return textwrap.fill(" ".join(text.split()), width=90)

    presets = "\n".join(
        textwrap.fill(
            _preset_summary(name),
            width=90,
            initial_indent=f"  {name + ':':<10}",
            subsequent_indent=" " * 12,
        )
        for name in PRESETS
    )
    run = RunFolder
    data = para(
        """PATH is the aclImdb folder or the .tar.gz archive (official aclImdb_v1.tar.gz or
        the same layout). Without --data, the archive cached by an earlier --download is used;
        --download fetches the official archive (sha256-checked) into the cache when it is not
        there yet."""
    )
    outputs = para(
        f"""Validation takes a seeded {_DEFAULTS.val_fraction:.0%} of the training reviews;
        the best epoch on it is kept (or, with --average-last N, the mean of the last N
        epochs' weights), then scored on the test split. The run folder (--out)
        receives {run.MODEL_WEIGHTS} + {run.MODEL_META} (the kept model, its config and
        vocabulary), {run.METRICS_CSV}/{run.METRICS_JSON}, {run.CURVES} and {run.RESUME_DIR}/
        (the latest training state). Ctrl-C saves a resumable state; --resume continues the
        run with the same result as if it had not stopped. On a terminal a progress bar shows
        each epoch; redirected to a file or a pipe, one plain line per epoch. Under torchrun,
        training is data-parallel (DistributedDataParallel; gloo on CPU, nccl on CUDA):"""
    )
    return f"""\
Train the IMDB sentiment classifier (embedding -> fastlstm.LSTM -> linear -> logit).

  fastlstm train --data PATH                     the default preset
  fastlstm train --data PATH --preset exercise   the teaching exercise's size

{presets}

{data}

{outputs}

  torchrun --nproc-per-node 2 -m fastlstm train --data PATH
"""


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'x'"
    return parse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _flag(name: str) -> str:
    """The option that sets :class:`TrainConfig` field ``name``: ``--no-amp``, ``--epochs``."""
    opt = option(name)
    if opt.flag is not None:
        return opt.flag
    dashed = name.replace("_", "-")
    switches_off = value_type(name) is bool and not opt.both and getattr(_DEFAULTS, name)
    return f"--no-{dashed}" if switches_off else f"--{dashed}"


def _shown(config: TrainConfig, name: str) -> str | None:
    """Field ``name`` of ``config`` as ``--help`` writes it (None: nothing to show)."""
    opt = option(name)
    value = getattr(config, opt.shown or name)
    if value is None:
        return opt.none
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _help(name: str) -> str:
    """Field ``name``'s help with its default: ``(default 64)``, ``(default: off)``, or
    ``(preset: exercise 40, default 64)`` where the presets differ."""
    opt = option(name)
    if name == "preset":
        return f"{opt.help}: " + "; ".join(f"'{n}': {_preset_summary(n)}" for n in PRESETS)
    if opt.default_text is not None:
        return f"{opt.help} (default: {opt.default_text})"
    if value_type(name) is bool and not opt.both:
        return opt.help  # the flag itself says what it changes from the default
    values = {n: _shown(TrainConfig.from_preset(n), name) for n in PRESETS}
    if len(set(values.values())) > 1:
        return f"{opt.help} (preset: " + ", ".join(f"{n} {v}" for n, v in values.items()) + ")"
    value = _shown(_DEFAULTS, name)
    if value is None:
        return opt.help
    colon = ":" if getattr(_DEFAULTS, opt.shown or name) is None else ""
    return f"{opt.help} (default{colon} {value})"


def add_setting(parser: argparse._ActionsContainer, name: str) -> None:
    """Offer :class:`TrainConfig` field ``name`` on ``parser`` as its ``Option`` says."""
    opt = option(name)
    kind = value_type(name)
    kwargs: dict[str, Any] = {"dest": name, "help": _help(name), "default": None}
    if kind is bool:
        if opt.both:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["action"] = "store_false" if getattr(_DEFAULTS, name) else "store_true"
        parser.add_argument(_flag(name), **kwargs)
        return
    if opt.parser_default:
        kwargs["default"] = getattr(_DEFAULTS, name)
    if opt.choices is not None:
        kwargs["choices"] = opt.choices
    elif opt.minimum is not None:
        kwargs["type"] = _at_least(opt.minimum)
    elif opt.fraction:
        kwargs["type"] = _fraction
    elif kind is not str:
        kwargs["type"] = kind
    parser.add_argument(_flag(name), metavar=opt.metavar, **kwargs)


def _add_download(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--download",
        action="store_true",
        help="fetch the official archive into the cache if no --data and none cached",
    )


def _add_resume(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --out (its settings; "
        + ", ".join(_flag(name) for name in RESUMABLE_KEYS)
        + " may change)",
    )
    group.add_argument(
        "--force",
        action="store_true",
        help="replace a finished or interrupted run already in --out",
    )


# Options of ``train`` that are no setting of the run, listed after the setting they go with.
_ALONGSIDE: dict[str, Callable[[argparse._ActionsContainer], None]] = {
    "data": _add_download,
    "out": _add_resume,
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``, ``evaluate`` and ``predict`` on the ``fastlstm`` parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "train",
        help="train the IMDB sentiment classifier",
        description=_train_description(),
        formatter_class=fmt,
    )
    for key, title in _GROUPS.items():
        group = p.add_argument_group(title)
        names = [f.name for f in fields(TrainConfig) if option(f.name).group == key]
        # The preset first among the model options: it gives their defaults.
        for name in sorted(names, key=lambda name: name != "preset"):
            add_setting(group, name)
            if name in _ALONGSIDE:
                _ALONGSIDE[name](group)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "evaluate",
        help="accuracy of a trained classifier on an IMDB split",
        description="Score a checkpoint written by 'fastlstm train' on the IMDB test split "
        "(or train/val), printing accuracy and loss.",
        formatter_class=fmt,
    )
    _add_checkpoint_option(p)
    p.add_argument("--data", metavar="PATH", help="aclImdb folder or .tar.gz (default: cached)")
    p.add_argument("--cache-dir", metavar="DIR", help="cache folder (see fastlstm train --help)")
    p.add_argument(
        "--split",
        choices=("test", "train", "val"),
        default="test",
        help="which reviews: test (default), train, or the run's validation part",
    )
    add_setting(p, "eval_batch_size")
    p.add_argument("--backend", choices=BACKENDS, help="LSTM backend (default: as trained)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_setting(p, "device")
    add_setting(p, "threads")
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser(
        "predict",
        help="sentiment of reviews given as text, a file or stdin",
        description="Print the probability that each review is positive.\n\n"
        '  fastlstm predict "A wonderful film." "Dull and too long."\n'
        "  fastlstm predict --file reviews.txt      one review per line\n"
        "  cat reviews.txt | fastlstm predict       the same from stdin",
        formatter_class=fmt,
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help="reviews to score")
    p.add_argument(
        "--file", "-f", metavar="FILE", help="read one review per line from FILE ('-' for stdin)"
    )
    _add_checkpoint_option(p)
    p.add_argument("--backend", choices=BACKENDS, help="LSTM backend (default: as trained)")
    p.add_argument("--json", action="store_true", help="one JSON object per review")
    add_setting(p, "device")
    add_setting(p, "threads")
    p.set_defaults(func=run_predict)


def _add_checkpoint_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        "-c",
        default=_DEFAULTS.out,
        metavar="DIR",
        help=f"run folder (or its {RunFolder.MODEL_WEIGHTS}) (default {_DEFAULTS.out})",
    )


def _device(requested: str | None) -> str:
    """Validate ``--device``; a GPU request on a machine without one is a user error."""
    if requested is None:
        return local_rank_device("cuda") if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(requested)
    except RuntimeError as err:
        raise CLIError(f"--device {requested}: not a device ({err}); use cpu or cuda") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(
                f"--device {requested}: no CUDA GPU is visible on this machine; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(
                f"--device {requested}: only {torch.cuda.device_count()} GPU(s) visible; use cuda:0"
            )
        return local_rank_device(requested)
    if dev.type != "cpu":
        raise CLIError(f"--device {requested}: unsupported; use cpu or cuda")
    return requested


def _check_backend(backend: str | None, device: str, hidden_size: int) -> None:
    if backend is None:
        return
    try:
        select_backend(backend, torch.device(device), torch.float32, hidden_size)
    except (RuntimeError, ValueError) as err:
        raise CLIError(f"--backend {backend}: {err}") from err


def _threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def _data_path(data: str | None, cache_dir: str | None, download: bool = False) -> Path:
    try:
        return resolve_imdb(data, cache_dir, download)
    except DataError as err:
        raise CLIError(str(err)) from err


def _load_corpus(path: Path, cache_dir: str | None, progress: bool) -> Corpus:
    try:
        corpus = load_corpus(path, cache_dir=cache_dir, progress=progress)
    except DataError as err:
        raise CLIError(str(err)) from err
    if "train" not in corpus.splits:
        raise CLIError(f"{path} has no train/ reviews; pass the full aclImdb dataset")
    return corpus


def _train_config(args: argparse.Namespace, run: RunFolder) -> tuple[TrainConfig, Vocab | None]:
    """The run's settings (and vocabulary, when resuming) from the options."""
    overrides = {
        k: v
        for k, v in vars(args).items()
        if v is not None and k in TrainConfig.__dataclass_fields__ and k not in ("out", "preset")
    }
    if args.resume:
        try:
            saved, vocab = read_training_config(run.path)
        except CheckpointError as err:
            raise CLIError(f"--resume: {err}") from err
        config = saved.resumed(overrides)
        device = args.device if args.device is not None else config.device
    else:
        vocab, device = None, args.device
        try:
            run.check_new(force=args.force)
            config = TrainConfig.from_preset(args.preset, **overrides)
            config.check()
        except (RunExistsError, ValueError) as err:
            raise CLIError(str(err)) from err
    config.out = str(run.path)
    config.device = _device(device)
    return config, vocab


def run_train(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    run = RunFolder(args.out)
    config, vocab = _train_config(args, run)
    _check_backend(config.backend, config.device, config.hidden_size)
    path = _data_path(config.data, config.cache_dir, args.download)
    config.data = str(path)
    corpus = _load_corpus(path, config.cache_dir, config.progress)
    data = build_datasets(config, corpus, vocab)
    if args.force and not args.resume and launched_rank() == 0:
        run.remove_run()
    distributed = init_distributed(config.device)
    try:
        trainer = Trainer(config, data)
        try:
            result = trainer.fit(resume=args.resume)
        except CheckpointError as err:
            raise CLIError(f"--resume: {err}") from err
    finally:
        if distributed:
            destroy_distributed()
    if trainer.rank != 0:
        return 0
    print(_train_summary(result, trainer, run, time.perf_counter() - t0), flush=True)
    return 130 if result["status"] == "interrupted" else 0


def _train_summary(result: dict[str, Any], trainer: Trainer, run: RunFolder, seconds: float) -> str:
    if result["status"] == "interrupted":
        return (
            f"interrupted at epoch {trainer.epoch + 1}, step {trainer.step}; saved to "
            f"{result['resume']}; continue with: fastlstm train --out {run.path} --resume"
        )
    test = (
        f"test accuracy {100 * result['test_accuracy']:.2f}%, " if "test_accuracy" in result else ""
    )
    val = result["best_val_accuracy"]
    best = f"best val accuracy {100 * val:.2f}% " if val is not None else "no validation, kept "
    best += f"(epoch {result['best_epoch']}/{result['epochs_run']}"
    best += f"{', early stop' if result['status'] == 'early_stopped' else ''})"
    if "averaged_epochs" in result:
        first, last = result["averaged_epochs"][0], result["averaged_epochs"][-1]
        kept = f"weights averaged over epochs {first}-{last}"
        if result["average_val_accuracy"] is not None:
            kept += f" (val accuracy {100 * result['average_val_accuracy']:.2f}%)"
        best = f"{kept}; {best}"
    return (
        f"{test}{best} in {seconds_to_text(seconds)}; checkpoint {result['checkpoint']}, "
        f"plots {result.get('plot')}"
    )


def _load_checkpoint(path: str, backend: str | None, device: str) -> Any:
    try:
        model, vocab, meta = load_model(path, backend=backend)
    except CheckpointError as err:
        raise CLIError(str(err)) from err
    _check_backend(model.config["backend"], device, model.config["hidden_size"])
    return model.to(device).eval(), vocab, meta


def run_evaluate(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    _threads(args.threads)
    device = _device(args.device)
    model, vocab, meta = _load_checkpoint(args.checkpoint, args.backend, device)
    path = _data_path(args.data, args.cache_dir)
    corpus = _load_corpus(path, args.cache_dir, progress=False)
    try:
        # The run's own seed and validation share: --split val scores the reviews it held out.
        cfg = TrainConfig.from_dict(meta["train_config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CLIError(f"{args.checkpoint}: model.json has no valid train_config ({err})") from err
    idx = split_indices(corpus, cfg.val_fraction, cfg.seed)[args.split]
    dataset = encode_split(corpus, vocab, idx, meta.get("max_length"))
    metrics = evaluate(model, dataset, args.eval_batch_size, device)
    seconds = time.perf_counter() - t0
    if args.json:
        print(
            json.dumps(
                {
                    "split": args.split,
                    "reviews": len(dataset),
                    **metrics,
                    "seconds": seconds,
                    "checkpoint": args.checkpoint,
                }
            )
        )
    else:
        print(
            f"{args.split} accuracy {100 * metrics['accuracy']:.2f}% (loss {metrics['loss']:.4f}) "
            f"on {len(dataset):,} reviews in {seconds:.1f}s; checkpoint {args.checkpoint}"
        )
    return 0


def _read_reviews(args: argparse.Namespace) -> list[str]:
    texts = list(args.texts)
    if args.file is not None:
        if args.file == "-":
            texts += sys.stdin.read().splitlines()
        else:
            try:
                texts += Path(args.file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise CLIError(f"--file {args.file}: cannot read it ({err})") from err
    elif not texts and not sys.stdin.isatty():
        texts = sys.stdin.read().splitlines()
    if not texts:
        raise CLIError("no review given: pass TEXT arguments, --file FILE, or pipe text on stdin")
    return texts


def run_predict(args: argparse.Namespace) -> int:
    _threads(args.threads)
    device = _device(args.device)
    texts = _read_reviews(args)
    model, vocab, meta = _load_checkpoint(args.checkpoint, args.backend, device)
    try:
        probs = predict_texts(model, vocab, texts, meta.get("max_length"), device=device)
    except ReviewError as err:
        raise CLIError(str(err)) from err
    for text, p in zip(texts, probs, strict=True):
        label = "positive" if p >= 0.5 else "negative"
        if args.json:
            print(json.dumps({"text": text, "label": label, "probability_positive": p}))
        else:
            short = text if len(text) <= 70 else text[:67] + "..."
            print(f"{label}\t{p:.3f}\t{short}")
    return 0
