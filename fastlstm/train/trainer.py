"""Training loop for the sentiment classifier: seeded, resumable, optionally data-parallel."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastlstm.data import (
    BucketBatchSampler,
    Corpus,
    ReviewDataset,
    Vocab,
    collate,
    load_corpus,
    train_val_split,
)
from fastlstm.models.sentiment import PRESETS, SentimentClassifier
from fastlstm.train.checkpoint import (
    CheckpointError,
    check_state_dict,
    load_optimizer_state,
    optimizer_state_tensors,
    read_json,
    read_tensors,
    save_model,
    write_json,
    write_tensors,
)

__all__ = ["TrainConfig", "Trainer", "build_datasets", "evaluate", "is_main_process"]

RESUME_DIR = "resume"
LR_SCHEDULES = ("constant", "cosine")
# Training settings that go with each model preset (measured in docs/training.md).
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "exercise": {"epochs": 12},
    "default": {"epochs": 6},
}


@dataclass
class TrainConfig:
    """Every setting of a training run; saved with the run so ``--resume`` can restore it.

    Model fields default to the ``"default"`` preset (see :data:`fastlstm.models.PRESETS`).
    """

    data: str | None = None
    out: str = "runs/imdb"
    preset: str = "default"
    vocab_max_size: int | None = 10000
    min_freq: int = 1
    max_length: int | None = None
    embedding_dim: int = 64
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.3
    pooling: str = "max"
    backend: str = "auto"
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 2e-3
    lr_schedule: str = "constant"
    clip: float = 30.0
    epochs: int = 6
    val_fraction: float = 0.1
    patience: int | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    threads: int | None = None
    cache_dir: str | None = None
    progress: bool = True
    evaluate_test: bool = True

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> TrainConfig:
        """The config of model preset ``preset`` with ``overrides`` applied."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
        return cls(**{"preset": preset, **PRESETS[preset], **PRESET_TRAINING[preset], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def model_kwargs(self, vocab_size: int) -> dict[str, Any]:
        return {
            "vocab_size": vocab_size,
            "embedding_dim": self.embedding_dim,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            "dropout": self.dropout,
            "backend": self.backend,
            "pooling": self.pooling,
        }


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if _world()[0] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


@dataclass
class Datasets:
    vocab: Vocab
    train: ReviewDataset
    val: ReviewDataset | None
    test: ReviewDataset | None
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def build_datasets(
    config: TrainConfig, corpus: Corpus | None = None, vocab: Vocab | None = None
) -> Datasets:
    """Load the corpus, split train/validation (seeded), build or reuse the vocabulary, encode.

    The vocabulary is built from the training part only (never from validation or test).
    """
    t0 = time.perf_counter()
    if corpus is None:
        if config.data is None:
            raise ValueError("config.data is not set: give the IMDB folder or archive")
        corpus = load_corpus(config.data, cache_dir=config.cache_dir, progress=config.progress)
    all_train = corpus.split_indices("train")
    tr, va = train_val_split(len(all_train), config.val_fraction, config.seed)
    train_idx, val_idx = all_train[tr], all_train[va]
    if vocab is None:
        vocab = Vocab.build(corpus.token_counts(train_idx), config.vocab_max_size, config.min_freq)

    def make(idx: Tensor) -> ReviewDataset:
        return ReviewDataset(corpus.encode(vocab, idx, config.max_length), corpus.labels[idx])

    test = make(corpus.split_indices("test")) if "test" in corpus.splits else None
    return Datasets(
        vocab=vocab,
        train=make(train_idx),
        val=make(val_idx) if len(val_idx) else None,
        test=test,
        load_seconds=time.perf_counter() - t0,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: ReviewDataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> dict[str, float]:
    """Mean BCE loss and accuracy of ``model`` on ``dataset`` (sharded under DDP)."""
    device = torch.device(device)
    world, rank = _world()
    sampler = BucketBatchSampler(dataset.lengths, batch_size, shuffle=False, num_replicas=1, rank=0)
    batches = list(sampler)[rank::world]
    was_training = model.training
    model.eval()
    loss_sum = correct = count = 0.0
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    for idx in batches:
        tokens, lengths, labels = collate([dataset[i] for i in idx])
        tokens, lengths, labels = tokens.to(device), lengths.to(device), labels.to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(tokens, lengths).float()
        loss_sum += float(loss_fn(logits, labels))
        correct += float(((logits > 0).float() == labels).sum())
        count += len(idx)
    model.train(was_training)
    loss_sum, correct, count = _all_reduce_sum([loss_sum, correct, count], device)
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}


class _StopFlag:
    """Turns the first Ctrl-C (or SIGTERM) into a request to stop after the current step.

    SIGTERM is included because torchrun forwards a Ctrl-C to its workers as SIGTERM.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in self.SIGNALS:
            # Outside the main thread signals cannot be caught; training still runs.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


class Trainer:
    """Trains a :class:`SentimentClassifier` and writes checkpoints, metrics and plots.

    Args:
        config: the run's settings.
        data: vocabulary and encoded datasets (from :func:`build_datasets`).
        on_step: optional ``callback(trainer, epoch, step)`` after every optimizer step;
            tests use it to simulate Ctrl-C through :meth:`request_stop`.

    Under ``torchrun`` (process group initialised by the caller), the model is wrapped in
    ``DistributedDataParallel``, batches are dealt across ranks, metrics are all-reduced
    and only rank 0 writes files or shows progress.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: Datasets,
        on_step: Callable[[Trainer, int, int], None] | None = None,
    ) -> None:
        if config.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {LR_SCHEDULES}, got {config.lr_schedule!r}"
            )
        self.config, self.data, self.on_step = config, data, on_step
        self.device = torch.device(config.device)
        self.out = Path(config.out)
        self.world, self.rank = _world()
        self.main = self.rank == 0
        self._stop = _StopFlag()
        torch.manual_seed(config.seed)
        self.model = SentimentClassifier(**config.model_kwargs(len(data.vocab))).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.ddp: nn.Module = self.model
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.sampler = BucketBatchSampler(
            data.train.lengths,
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            num_replicas=self.world,
            rank=self.rank,
        )
        self.history: list[dict[str, float]] = []
        self.epoch, self.step = 0, 0
        # Best epoch so far: by validation accuracy, or by training loss without validation.
        self.best: dict[str, Any] = {"score": None, "val_accuracy": None, "epoch": 0}
        self.stale_epochs = 0
        self._partial = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}

    def request_stop(self) -> None:
        """Stop after the current step and save a resumable checkpoint (what Ctrl-C does)."""
        self._stop.requested = True

    @property
    def amp(self) -> bool:
        return self.config.amp and self.device.type == "cuda"

    def _stop_now(self) -> bool:
        flag = float(self._stop.requested)
        if self.world > 1:  # every rank must stop at the same step or DDP deadlocks
            flag = _all_reduce_sum([flag], self.device)[0]
        return flag > 0

    def _save_resume(self) -> None:
        if not self.main:
            return
        folder = self.out / RESUME_DIR
        folder.mkdir(parents=True, exist_ok=True)
        opt_tensors, opt_meta = optimizer_state_tensors(self.optimizer)
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        write_tensors(folder / "weights.safetensors", self.model.state_dict())
        write_tensors(folder / "optimizer.safetensors", opt_tensors)
        write_tensors(folder / "rng.safetensors", rng)
        write_json(
            folder / "state.json",
            {
                "format": "fastlstm.train-state",
                "version": 1,
                "config": asdict(self.config),
                "vocab": self.data.vocab.itos,
                "epoch": self.epoch,
                "step": self.step,
                "history": self.history,
                "best": self.best,
                "stale_epochs": self.stale_epochs,
                "partial": self._partial,
                "optimizer": opt_meta,
            },
        )

    def load_resume(self) -> None:
        """Restore the state saved in ``<out>/resume`` (model, optimizer, position, RNG)."""
        folder = self.out / RESUME_DIR
        state = read_json(folder / "state.json")
        if state.get("format") != "fastlstm.train-state":
            raise CheckpointError(f"{folder / 'state.json'} is not a fastlstm training state")
        if state.get("vocab") != self.data.vocab.itos:
            raise CheckpointError(
                f"{folder}: the saved vocabulary differs from this run's; resume with the "
                "vocabulary stored in the run (fastlstm train --resume does this)"
            )
        weights = read_tensors(folder / "weights.safetensors")
        check_state_dict(self.model, weights, folder / "weights.safetensors")
        self.model.load_state_dict(weights)
        try:
            load_optimizer_state(
                self.optimizer, read_tensors(folder / "optimizer.safetensors"), state["optimizer"]
            )
            rng = read_tensors(folder / "rng.safetensors")
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.history, self.best = list(state["history"]), dict(state["best"])
            self.stale_epochs, self._partial = int(state["stale_epochs"]), dict(state["partial"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{folder} is corrupt ({err}); start a new run") from err
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def _set_lr(self, steps_per_epoch: int) -> None:
        """Cosine decay to zero over the run, from the position alone (so resume matches)."""
        if self.config.lr_schedule == "constant":
            return
        done = (self.epoch * steps_per_epoch + self.step) / (self.config.epochs * steps_per_epoch)
        lr = self.config.lr * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _train_epoch(self) -> bool:
        """Run (the rest of) epoch ``self.epoch``; False when stopped part-way."""
        cfg = self.config
        self.sampler.set_epoch(self.epoch)
        batches = list(self.sampler)
        loss_fn = nn.BCEWithLogitsLoss()
        self.ddp.train()
        bar = None
        if self.main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=len(batches),
                initial=self.step,
                desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                unit="batch",
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
        p = self._partial
        t0 = time.perf_counter()
        try:
            for idx in batches[self.step :]:
                tokens, lengths, labels = collate([self.data.train[i] for i in idx])
                tokens, lengths = tokens.to(self.device), lengths.to(self.device)
                labels = labels.to(self.device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                    logits = self.ddp(tokens, lengths).float()
                loss = loss_fn(logits, labels)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
                self._set_lr(len(batches))
                self.optimizer.step()
                self.step += 1
                p["loss_sum"] += float(loss.detach()) * len(idx)
                p["correct"] += float(((logits.detach() > 0).float() == labels).sum())
                p["count"] += len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{p['loss_sum'] / p['count']:.4f}",
                        acc=f"{p['correct'] / p['count']:.3f}",
                        refresh=False,
                    )
                if self.on_step is not None:
                    self.on_step(self, self.epoch, self.step)
                if self._stop_now():
                    return False
        finally:
            p["seconds"] += time.perf_counter() - t0
            if bar is not None:
                bar.close()
        return True

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train for ``config.epochs`` epochs (from the saved state when ``resume``).

        Returns a summary: ``status`` ("finished", "early_stopped" or "interrupted"), the
        best epoch and validation accuracy, test metrics when a test set was given, timings
        and the paths written.
        """
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_resume()
        t_start = time.perf_counter()
        status = "finished"
        with self._stop:
            while self.epoch < cfg.epochs:
                if not self._train_epoch():
                    self._save_resume()
                    status = "interrupted"
                    break
                self._end_epoch()
                if cfg.patience is not None and self.stale_epochs >= cfg.patience:
                    status = "early_stopped"
                    break
        result: dict[str, Any] = {
            "status": status,
            "epochs_run": len(self.history),
            "best_epoch": self.best["epoch"],
            "best_val_accuracy": self.best["val_accuracy"],
            "seconds": time.perf_counter() - t_start,
            "world_size": self.world,
            "out": str(self.out),
            "checkpoint": str(self.out / "model.safetensors"),
            "resume": str(self.out / RESUME_DIR),
        }
        if status == "interrupted":
            return result
        if self.data.test is not None and cfg.evaluate_test and self.best["epoch"] > 0:
            # Every rank reloads the best weights from the file rank 0 wrote at that epoch;
            # the barrier makes sure the last write has landed.
            if self.world > 1:
                dist.barrier()
            self.model.load_state_dict(read_tensors(self.out / "model.safetensors"))
            test = evaluate(self.ddp, self.data.test, cfg.eval_batch_size, self.device, self.amp)
            result.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
        if self.main:
            result["plot"] = str(self._write_metrics(result))
            from fastlstm.train.checkpoint import MODEL_META

            meta = read_json(self.out / MODEL_META)
            meta["result"] = {k: v for k, v in result.items() if k not in ("out",)}
            write_json(self.out / MODEL_META, meta)
        return result

    def _end_epoch(self) -> None:
        cfg, p = self.config, self._partial
        loss_sum, correct, count = _all_reduce_sum(
            [p["loss_sum"], p["correct"], p["count"]], self.device
        )
        row: dict[str, float] = {
            "epoch": self.epoch + 1,
            "train_loss": loss_sum / max(count, 1),
            "train_accuracy": correct / max(count, 1),
            "train_reviews": count,
            "train_seconds": p["seconds"],
        }
        t0 = time.perf_counter()
        if self.data.val is not None:
            val = evaluate(self.ddp, self.data.val, cfg.eval_batch_size, self.device, self.amp)
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        row["eval_seconds"] = time.perf_counter() - t0
        self.history.append(row)
        score = row.get("val_accuracy", -row["train_loss"])
        if self.best["score"] is None or score > self.best["score"]:
            self.best = {
                "score": score,
                "val_accuracy": row.get("val_accuracy"),
                "epoch": self.epoch + 1,
            }
            self.stale_epochs = 0
            if self.main:
                save_model(
                    self.out,
                    self.model,
                    self.data.vocab,
                    {
                        "max_length": cfg.max_length,
                        "train_config": asdict(cfg),
                        "epoch": self.epoch + 1,
                        "val_accuracy": row.get("val_accuracy"),
                    },
                )
        else:
            self.stale_epochs += 1
        self.epoch += 1
        self.step = 0
        self._partial = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
        if self.main:
            msg = (
                f"epoch {row['epoch']}/{cfg.epochs}: train loss {row['train_loss']:.4f} "
                f"acc {row['train_accuracy']:.4f}"
            )
            if "val_accuracy" in row:
                msg += f" | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
            msg += f" | {row['train_seconds']:.1f}s train, {row['eval_seconds']:.1f}s eval"
            print(msg, file=sys.stderr, flush=True)
        self._save_resume()

    def _write_metrics(self, result: dict[str, Any]) -> Path:
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        tmp = self.out / "metrics.csv.tmp"
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, self.out / "metrics.csv")
        write_json(
            self.out / "metrics.json",
            {"history": self.history, "result": result, "config": asdict(self.config)},
        )
        return plot_history(self.history, self.out / "curves.png", result.get("test_accuracy"))


def plot_history(
    history: list[dict[str, float]], path: Path, test_accuracy: float | None = None
) -> Path:
    """Loss and accuracy curves per epoch (train and validation) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "-s")):
        if all(f"{split}_loss" in row for row in history):
            ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], style, label=split)
            ax_acc.plot(epochs, [100 * r[f"{split}_accuracy"] for r in history], style, label=split)
    if test_accuracy is not None:
        ax_acc.axhline(
            100 * test_accuracy,
            color="gray",
            ls="--",
            label=f"test (best model) {100 * test_accuracy:.2f}%",
        )
    ax_loss.set(xlabel="epoch", ylabel="BCE loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) < 20:
            ax.set_xticks(epochs)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def seconds_to_text(s: float) -> str:
    m, s = divmod(math.ceil(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def local_rank_device(device: str) -> str:
    """Under torchrun, ``cuda`` becomes ``cuda:<LOCAL_RANK>``."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device
