"""``fastlstm train``, ``fastlstm evaluate`` and ``fastlstm predict``.

Parsing, checks of user input and the final one-line summaries live here; the work is done
by :mod:`fastlstm.data`, :mod:`fastlstm.models` and :mod:`fastlstm.train`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]

TRAIN_DESCRIPTION = """\
Train the IMDB sentiment classifier (embedding -> fastlstm.LSTM -> linear -> logit).

  fastlstm train --data PATH              the default model (~0.7M parameters), 6 epochs
  fastlstm train --data PATH --preset exercise   the teaching exercise's size (209k), 12 epochs

PATH is the aclImdb folder or the .tar.gz archive (official aclImdb_v1.tar.gz or the same
layout). Without --data, the archive cached by an earlier --download is used; --download
fetches the official archive (sha256-checked) into the cache when it is not there yet.

Validation takes a seeded 10% of the training reviews; the best epoch on it is kept, then
scored on the test split. The run folder (--out) receives model.safetensors + model.json (the
best model, its config and vocabulary), metrics.csv/metrics.json, curves.png and resume/
(the latest training state). Ctrl-C saves a resumable state; --resume continues the run with
the same result as if it had not stopped. Under torchrun, training is data-parallel
(DistributedDataParallel; gloo on CPU, nccl on CUDA):

  torchrun --nproc-per-node 2 -m fastlstm train --data PATH
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``, ``evaluate`` and ``predict`` on the ``fastlstm`` parser."""
    from fastlstm import BACKENDS
    from fastlstm.models.sentiment import POOLINGS, PRESETS

    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "train",
        help="train the IMDB sentiment classifier",
        description=TRAIN_DESCRIPTION,
        formatter_class=fmt,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", help="aclImdb folder or .tar.gz archive")
    g.add_argument(
        "--download",
        action="store_true",
        help="fetch the official archive into the cache if no --data and none cached",
    )
    g.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="cache for the download and the encoded "
        "corpus (default $FASTLSTM_CACHE or ~/.cache/fastlstm)",
    )
    g.add_argument(
        "--vocab-size",
        type=int,
        metavar="N",
        dest="vocab_max_size",
        help="most frequent words kept, besides <pad> and <unk> (preset: 10000; exercise 5000)",
    )
    g.add_argument(
        "--min-freq",
        type=_positive_int,
        metavar="N",
        help="drop words seen fewer than N times in training (default 1)",
    )
    g.add_argument(
        "--max-length",
        type=_positive_int,
        metavar="N",
        help="keep only the first N tokens of each review (default: all)",
    )
    g.add_argument(
        "--val-fraction",
        type=_fraction,
        metavar="F",
        help="share of the training reviews held out for validation (default 0.1)",
    )
    g = p.add_argument_group("model (defaults come from --preset)")
    g.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="default",
        help="'default': bidirectional LSTM 64, embedding 64, max pooling, "
        "vocabulary 10,000; 'exercise': LSTM 30, embedding 40, max pooling, 5,000",
    )
    g.add_argument("--embedding-dim", type=_positive_int, metavar="N", help="embedding width")
    g.add_argument(
        "--hidden-size", type=_positive_int, metavar="N", help="LSTM hidden size per direction"
    )
    g.add_argument("--num-layers", type=_positive_int, metavar="N", help="stacked LSTM layers")
    g.add_argument(
        "--bidirectional",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read each review in both directions",
    )
    g.add_argument(
        "--dropout",
        type=_fraction,
        metavar="P",
        help="dropout on embeddings, between layers and before the head",
    )
    g.add_argument(
        "--pooling",
        choices=POOLINGS,
        help="review vector: last hidden state, or max/mean over time",
    )
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        help="LSTM backend (default auto: triton on CUDA, aten on CPU)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--epochs",
        type=_positive_int,
        metavar="N",
        help="epochs (default: 6 for the default preset, 12 for exercise)",
    )
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        help="reviews per batch, per process (default 64)",
    )
    g.add_argument("--lr", type=float, metavar="LR", help="Adam learning rate (default 2e-3)")
    g.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        help="constant learning rate, or cosine decay to zero over all epochs (default constant)",
    )
    g.add_argument(
        "--clip",
        type=float,
        metavar="NORM",
        help="gradient-norm clipping threshold, 0 to disable (default 30)",
    )
    g.add_argument(
        "--patience",
        type=_positive_int,
        metavar="N",
        help="stop after N epochs without a better validation accuracy (default: off)",
    )
    g.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="seed for initialisation, split and batch order (default 0)",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--out",
        metavar="DIR",
        default="runs/imdb",
        help="run folder for checkpoint, metrics and plots (default runs/imdb)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --out (its settings; --epochs may extend it)",
    )
    g.add_argument(
        "--force",
        action="store_true",
        help="replace a finished or interrupted run already in --out",
    )
    _add_device_options(g)
    g.add_argument(
        "--no-amp",
        dest="amp",
        action="store_false",
        default=None,
        help="disable bf16 autocast (used on CUDA only)",
    )
    g.add_argument(
        "--no-test",
        dest="evaluate_test",
        action="store_false",
        default=None,
        help="skip scoring the best model on the test split at the end",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bars (epoch lines are still printed)",
    )
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "evaluate",
        help="accuracy of a trained classifier on an IMDB split",
        description="Score a checkpoint written by 'fastlstm train' on the IMDB test split "
        "(or train/val), printing accuracy and loss.",
        formatter_class=fmt,
    )
    p.add_argument(
        "--checkpoint",
        "-c",
        default="runs/imdb",
        metavar="DIR",
        help="run folder (or its model.safetensors) (default runs/imdb)",
    )
    p.add_argument("--data", metavar="PATH", help="aclImdb folder or .tar.gz (default: cached)")
    p.add_argument("--cache-dir", metavar="DIR", help="cache folder (see fastlstm train --help)")
    p.add_argument(
        "--split",
        choices=("test", "train", "val"),
        default="test",
        help="which reviews: test (default), train, or the run's validation part",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=256,
        metavar="N",
        help="reviews per batch (default 256)",
    )
    p.add_argument("--backend", choices=BACKENDS, help="LSTM backend (default: as trained)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_device_options(p)
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
    p.add_argument(
        "--checkpoint",
        "-c",
        default="runs/imdb",
        metavar="DIR",
        help="run folder (or its model.safetensors) (default runs/imdb)",
    )
    p.add_argument("--backend", choices=BACKENDS, help="LSTM backend (default: as trained)")
    p.add_argument("--json", action="store_true", help="one JSON object per review")
    _add_device_options(p)
    p.set_defaults(func=run_predict)


def _add_device_options(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--device",
        metavar="DEV",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="CPU threads for PyTorch (default: PyTorch's choice)",
    )


def _device(requested: str | None) -> str:
    """Validate ``--device``; a GPU request on a machine without one is a user error."""
    import torch

    from fastlstm.cli import CLIError
    from fastlstm.train.trainer import local_rank_device

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
    import torch

    from fastlstm import select_backend
    from fastlstm.cli import CLIError

    if backend is None:
        return
    try:
        select_backend(backend, torch.device(device), torch.float32, hidden_size)
    except (RuntimeError, ValueError) as err:
        raise CLIError(f"--backend {backend}: {err}") from err


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _data_path(data: str | None, cache_dir: str | None, download: bool = False) -> Path:
    from fastlstm.cli import CLIError
    from fastlstm.data import DataError, resolve_imdb

    try:
        return resolve_imdb(data, cache_dir, download)
    except DataError as err:
        raise CLIError(str(err)) from err


def _load_corpus(path: Path, cache_dir: str | None, progress: bool) -> Any:
    from fastlstm.cli import CLIError
    from fastlstm.data import DataError, load_corpus

    try:
        corpus = load_corpus(path, cache_dir=cache_dir, progress=progress)
    except DataError as err:
        raise CLIError(str(err)) from err
    if "train" not in corpus.splits:
        raise CLIError(f"{path} has no train/ reviews; pass the full aclImdb dataset")
    return corpus


def _init_distributed(device: str) -> bool:
    """Join the torchrun process group when launched by torchrun; True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    return True


def run_train(args: argparse.Namespace) -> int:
    from fastlstm.cli import CLIError
    from fastlstm.data import Vocab
    from fastlstm.train.checkpoint import CheckpointError, read_json
    from fastlstm.train.trainer import (
        RESUME_DIR,
        TrainConfig,
        Trainer,
        build_datasets,
        seconds_to_text,
    )

    t0 = time.perf_counter()
    out = Path(args.out)
    overrides = {
        k: v
        for k, v in vars(args).items()
        if v is not None and k in TrainConfig.__dataclass_fields__ and k not in ("out", "preset")
    }
    vocab = None
    if args.resume:
        state_path = out / RESUME_DIR / "state.json"
        if not state_path.is_file():
            raise CLIError(
                f"--resume: no saved run in {out} ({state_path} missing); "
                "check --out, or start a new run without --resume"
            )
        try:
            state = read_json(state_path)
            config = TrainConfig.from_dict(state["config"])
            vocab = Vocab(state["vocab"])
        except (CheckpointError, KeyError, TypeError, ValueError) as err:
            raise CLIError(f"--resume: {err}") from err
        # Only where the data lives, how long to train and how to show it may change.
        for key in ("data", "cache_dir", "epochs", "progress", "threads", "device"):
            if key in overrides:
                setattr(config, key, overrides[key])
    else:
        names = ("model.json", "model.safetensors", RESUME_DIR)
        existing = [n for n in names if (out / n).exists()]
        if existing and not args.force:
            raise CLIError(
                f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue "
                "it, --force to replace it, or choose another --out"
            )
        try:
            config = TrainConfig.from_preset(args.preset, out=str(out), **overrides)
        except ValueError as err:
            raise CLIError(str(err)) from err
    config.out = str(out)
    config.device = _device(
        args.device if args.device is not None else (config.device if args.resume else None)
    )
    _check_backend(config.backend, config.device, config.hidden_size)
    if config.progress and not sys.stderr.isatty():
        config.progress = False
    path = _data_path(config.data, config.cache_dir, getattr(args, "download", False))
    config.data = str(path)
    corpus = _load_corpus(path, config.cache_dir, config.progress)
    data = build_datasets(config, corpus, vocab)
    if args.force and not args.resume and int(os.environ.get("RANK", "0")) == 0:
        _remove_run(out)
    distributed = _init_distributed(config.device)
    try:
        trainer = Trainer(config, data)
        try:
            result = trainer.fit(resume=args.resume)
        except CheckpointError as err:
            raise CLIError(f"--resume: {err}") from err
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    if trainer.rank != 0:
        return 0
    elapsed = seconds_to_text(time.perf_counter() - t0)
    if result["status"] == "interrupted":
        print(
            f"interrupted at epoch {trainer.epoch + 1}, step {trainer.step}; saved to "
            f"{result['resume']}; continue with: fastlstm train --out {out} --resume",
            flush=True,
        )
        return 130
    test = (
        f"test accuracy {100 * result['test_accuracy']:.2f}%, " if "test_accuracy" in result else ""
    )
    val = result["best_val_accuracy"]
    best = f"best val accuracy {100 * val:.2f}% " if val is not None else "no validation, kept "
    print(
        f"{test}{best}(epoch {result['best_epoch']}/{result['epochs_run']}"
        f"{', early stop' if result['status'] == 'early_stopped' else ''}) in {elapsed}; "
        f"checkpoint {result['checkpoint']}, plots {result.get('plot')}",
        flush=True,
    )
    return 0


def _remove_run(out: Path) -> None:
    """Delete the files a previous run left in ``out`` (only those ``train`` writes)."""
    import shutil

    from fastlstm.train.trainer import RESUME_DIR

    for name in ("model.safetensors", "model.json", "metrics.csv", "metrics.json", "curves.png"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / RESUME_DIR, ignore_errors=True)


def _load_checkpoint(path: str, backend: str | None, device: str) -> Any:
    from fastlstm.cli import CLIError
    from fastlstm.train.checkpoint import CheckpointError, load_model

    try:
        model, vocab, meta = load_model(path, backend=backend)
    except CheckpointError as err:
        raise CLIError(str(err)) from err
    _check_backend(model.config["backend"], device, model.config["hidden_size"])
    return model.to(device).eval(), vocab, meta


def run_evaluate(args: argparse.Namespace) -> int:
    from fastlstm.data import ReviewDataset, train_val_split
    from fastlstm.train.trainer import TrainConfig, evaluate

    t0 = time.perf_counter()
    _threads(args.threads)
    device = _device(args.device)
    model, vocab, meta = _load_checkpoint(args.checkpoint, args.backend, device)
    path = _data_path(args.data, args.cache_dir)
    corpus = _load_corpus(path, args.cache_dir, progress=False)
    if args.split == "test":
        idx = corpus.split_indices("test")
    else:
        cfg = TrainConfig.from_dict(meta.get("train_config", {}))
        all_train = corpus.split_indices("train")
        tr, va = train_val_split(len(all_train), cfg.val_fraction, cfg.seed)
        idx = all_train[tr if args.split == "train" else va]
    dataset = ReviewDataset(corpus.encode(vocab, idx, meta.get("max_length")), corpus.labels[idx])
    metrics = evaluate(model, dataset, args.batch_size, device)
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
    from fastlstm.cli import CLIError

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
    import torch

    from fastlstm.cli import CLIError
    from fastlstm.data import UNK_INDEX, collate, tokenize

    _threads(args.threads)
    device = _device(args.device)
    texts = _read_reviews(args)
    model, vocab, meta = _load_checkpoint(args.checkpoint, args.backend, device)
    encoded = []
    for n, text in enumerate(texts, 1):
        tokens = tokenize(text)
        if not tokens:
            raise CLIError(f"review {n} is empty; give some text to score")
        ids = vocab.encode(tokens, meta.get("max_length"))
        if bool((ids == UNK_INDEX).all()):
            raise CLIError(
                f"review {n} ({text[:40]!r}) has no word the model knows, so its score would be "
                "meaningless; give an English movie review"
            )
        encoded.append((ids, 0))
    probs: list[float] = []
    for start in range(0, len(encoded), 256):
        tokens, lengths, _ = collate(encoded[start : start + 256])
        with torch.no_grad():
            probs += model.predict_proba(tokens.to(device), lengths.to(device)).tolist()
    for text, p in zip(texts, probs, strict=True):
        label = "positive" if p >= 0.5 else "negative"
        if args.json:
            print(json.dumps({"text": text, "label": label, "probability_positive": p}))
        else:
            short = text if len(text) <= 70 else text[:67] + "..."
            print(f"{label}\t{p:.3f}\t{short}")
    return 0
