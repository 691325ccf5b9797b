"""The training loop: seeded, resumable, optionally data-parallel; and evaluation."""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastlstm.data import BucketBatchSampler, ReviewDataset, collate
from fastlstm.models.sentiment import SentimentClassifier
from fastlstm.runtime import large_blocks_mapped, steady_cpu_allocator
from fastlstm.train.checkpoint import (
    TrainingState,
    load_training_state,
    read_json,
    read_tensors,
    save_model,
    save_training_state,
    write_json,
)
from fastlstm.train.config import TrainConfig
from fastlstm.train.datasets import Datasets, batch_to_device
from fastlstm.train.distributed import all_reduce_sum, sum_to_host, world
from fastlstm.train.metrics import write_metrics
from fastlstm.train.run_folder import RunFolder

__all__ = ["Trainer", "epoch_line", "evaluate", "seconds_to_text"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: ReviewDataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> dict[str, float]:
    """Mean BCE loss and accuracy of ``model`` on ``dataset`` (sharded under DDP).

    The sums stay on the device until the last batch: the host reads them once per call
    (a read waits for the device), not once per batch.
    """
    device = torch.device(device)
    n_ranks, rank = world()
    sampler = BucketBatchSampler(dataset.lengths, batch_size, shuffle=False, num_replicas=1, rank=0)
    batches = list(sampler)[rank::n_ranks]
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, correct predictions
    count = 0
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    for idx in batches:
        tokens, lengths, labels = batch_to_device(collate([dataset[i] for i in idx]), device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(tokens, lengths).float()
        sums += torch.stack((loss_fn(logits, labels).double(), _correct(logits, labels)))
        count += len(idx)
    model.train(was_training)
    loss_sum, correct, count = sum_to_host(torch.cat((sums, sums.new_tensor([count]))))
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}


def _correct(logits: Tensor, labels: Tensor) -> Tensor:
    """How many of the batch's predictions are right, as a float64 scalar on the device."""
    return ((logits > 0).float() == labels).sum().double()


class _RunningSums:
    """An epoch's running loss and correct-prediction sums, kept on the device.

    Reading a value to the host waits until the device has run every queued step, and the
    host then has no next step queued, so the GPU idles. The trainer adds each step's
    figures here without reading them and reads them (:meth:`read`) only per log interval
    and at the end of the epoch. They continue the sums in ``partial`` (the epoch's running
    sums in :class:`~fastlstm.train.checkpoint.TrainingState`, saved on Ctrl-C), and add up
    in the same order and precision as float64 sums on the host would.
    """

    def __init__(self, partial: dict[str, float], device: torch.device) -> None:
        self.partial = partial
        self._sums = torch.tensor(
            [partial["loss_sum"], partial["correct"]], dtype=torch.float64, device=device
        )
        self._count = 0  # reviews added since the last read (a host number: no read needed)

    def add(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        """Add one step: ``loss`` the batch's mean loss, ``logits`` and ``labels`` ``[B]``."""
        n = labels.shape[0]
        self._sums += torch.stack((loss.detach().double() * n, _correct(logits.detach(), labels)))
        self._count += n

    def read(self) -> dict[str, float]:
        """``partial`` brought up to date (one transfer; none when nothing was added)."""
        if self._count:
            self.partial["loss_sum"], self.partial["correct"] = self._sums.tolist()
            self.partial["count"] += self._count
            self._count = 0
        return self.partial


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


def _progress_bar(total: int, initial: int, desc: str, stream: TextIO) -> Any:
    """A tqdm bar on ``stream``, or None when ``stream`` is not a terminal.

    Redirected to a file or a pipe, carriage-return bars would flood the log; the trainer's
    one line per epoch says what a reader needs there.
    """
    if not stream.isatty():
        return None
    # Imported here: only interactive runs draw bars.
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="batch",
        file=stream,
        leave=False,
        dynamic_ncols=True,
    )


def epoch_line(row: dict[str, float], epochs: int) -> str:
    """The one plain line printed per epoch."""
    msg = (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} "
        f"acc {row['train_accuracy']:.4f}"
    )
    if "val_accuracy" in row:
        msg += f" | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
    return msg + f" | {row['train_seconds']:.1f}s train, {row['eval_seconds']:.1f}s eval"


class Trainer:
    """Trains a :class:`SentimentClassifier` and writes checkpoints, metrics and plots.

    Args:
        config: the run's settings.
        data: vocabulary and encoded datasets (from :func:`build_datasets`).
        on_step: optional ``callback(trainer, epoch, step)`` after every optimizer step;
            tests use it to simulate Ctrl-C through :meth:`request_stop`. During an epoch
            ``trainer.state.partial`` holds the running sums of the last log interval.
        log: where the line per epoch goes (default ``sys.stderr``); progress bars are
            drawn there too, when it is a terminal and ``config.progress`` is on.

    Under ``torchrun`` (process group initialised by the caller), the model is wrapped in
    ``DistributedDataParallel``, batches are dealt across ranks, metrics are all-reduced
    and only rank 0 writes files or shows progress.

    A training step never waits for the device: batches are copied without waiting, the
    lengths stay on the host, and the running loss and accuracy stay on the device until the
    log interval (``config.log_every`` steps) or the end of the epoch.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: Datasets,
        on_step: Callable[[Trainer, int, int], None] | None = None,
        log: TextIO | None = None,
    ) -> None:
        config.check()
        self.config, self.data, self.on_step = config, data, on_step
        self.log = log
        self.device = torch.device(config.device)
        self.run = RunFolder(config.out)
        self.out = self.run.path
        self.world, self.rank = world()
        self.main = self.rank == 0
        self._stop = _StopFlag()
        torch.manual_seed(config.seed)
        self.model = SentimentClassifier(**config.model_kwargs(len(data.vocab))).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.ddp: nn.Module = self.model
        if self.world > 1:
            # No device_ids: with them DDP would copy every input to the GPU, the lengths
            # too, which the LSTM must read on the host (batch_to_device places the inputs).
            self.ddp = nn.parallel.DistributedDataParallel(self.model)
        self.sampler = BucketBatchSampler(
            data.train.lengths,
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            num_replicas=self.world,
            rank=self.rank,
        )
        self.state = TrainingState()

    # The position, for callers and callbacks (``trainer.epoch``, ``trainer.step``).
    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def history(self) -> list[dict[str, float]]:
        return self.state.history

    @property
    def best(self) -> dict[str, Any]:
        return self.state.best

    def request_stop(self) -> None:
        """Stop after the current step and save a resumable checkpoint (what Ctrl-C does)."""
        self._stop.requested = True

    @property
    def amp(self) -> bool:
        return self.config.amp and self.device.type == "cuda"

    def _stop_now(self, at_interval: bool) -> bool:
        """Whether to stop after this step (a Ctrl-C, or :meth:`request_stop`).

        Alone, as soon as asked. Under DDP every rank must stop at the same step or DDP
        deadlocks, and agreeing is an all-reduce the host waits for, so the ranks agree at
        log intervals (and the epoch's last step) only.
        """
        if self.world == 1:
            return self._stop.requested
        if not at_interval:
            return False
        return all_reduce_sum([float(self._stop.requested)], self.device)[0] > 0

    def _save_resume(self) -> None:
        if self.main:
            save_training_state(
                self.out, self.config, self.data.vocab, self.state, self.model, self.optimizer
            )

    def load_resume(self) -> None:
        """Restore the state saved in ``<out>/resume`` (model, optimizer, position, RNG)."""
        self.state = load_training_state(self.out, self.data.vocab, self.model, self.optimizer)

    def _set_lr(self, steps_per_epoch: int) -> None:
        """Cosine decay to zero over the run, from the position alone (so resume matches)."""
        if self.config.lr_schedule == "constant":
            return
        s = self.state
        done = (s.epoch * steps_per_epoch + s.step) / (self.config.epochs * steps_per_epoch)
        lr = self.config.lr * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _train_epoch(self) -> bool:
        """Run (the rest of) epoch ``self.epoch``; False when stopped part-way."""
        cfg, s = self.config, self.state
        self.sampler.set_epoch(s.epoch)
        batches = list(self.sampler)
        loss_fn = nn.BCEWithLogitsLoss()
        self.ddp.train()
        bar = None
        if self.main and cfg.progress:
            bar = _progress_bar(
                len(batches), s.step, f"epoch {s.epoch + 1}/{cfg.epochs}", self._log_stream
            )
        sums = _RunningSums(s.partial, self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            for idx in batches[s.step :]:
                batch = collate([self.data.train[i] for i in idx])
                tokens, lengths, labels = batch_to_device(batch, self.device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                    logits = self.ddp(tokens, lengths).float()
                loss = loss_fn(logits, labels)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
                self._set_lr(len(batches))
                self.optimizer.step()
                s.step += 1
                sums.add(loss, logits, labels)
                at_interval = s.step % cfg.log_every == 0 or s.step == len(batches)
                if bar is not None:
                    bar.update(1)
                    if at_interval:
                        p = sums.read()
                        bar.set_postfix(
                            loss=f"{p['loss_sum'] / p['count']:.4f}",
                            acc=f"{p['correct'] / p['count']:.3f}",
                            refresh=False,
                        )
                if self.on_step is not None:
                    self.on_step(self, s.epoch, s.step)
                if self._stop_now(at_interval):
                    return False
        finally:
            # Read before the clock stops, so the time includes the device's queued work.
            p = sums.read()
            p["seconds"] += time.perf_counter() - t0
            p["cpu_seconds"] += time.process_time() - c0
            if bar is not None:
                bar.close()
        return True

    @property
    def _log_stream(self) -> TextIO:
        return self.log if self.log is not None else sys.stderr

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train for ``config.epochs`` epochs (from the saved state when ``resume``).

        Returns a summary: ``status`` ("finished", "early_stopped" or "interrupted"), the
        best epoch and validation accuracy, test metrics when a test set was given, timings
        and the paths written.
        """
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cpu":
            # Every step frees and reallocates the same large activations; glibc's default
            # hands them back to the OS and page-faults them in again on every step. Keeping
            # them costs memory, which ``low_memory`` declines.
            steady_cpu_allocator(heap_only=not cfg.low_memory)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_resume()
        t_start = time.perf_counter()
        status = "finished"
        with self._stop:
            while self.state.epoch < cfg.epochs:
                if not self._train_epoch():
                    self._save_resume()
                    status = "interrupted"
                    break
                self._end_epoch()
                if cfg.patience is not None and self.state.stale_epochs >= cfg.patience:
                    status = "early_stopped"
                    break
        result: dict[str, Any] = {
            "status": status,
            "epochs_run": len(self.state.history),
            "best_epoch": self.state.best["epoch"],
            "best_val_accuracy": self.state.best["val_accuracy"],
            "seconds": time.perf_counter() - t_start,
            "world_size": self.world,
            "out": str(self.out),
            "checkpoint": str(self.run.model_weights),
            "resume": str(self.run.resume),
        }
        if status == "interrupted":
            return result
        if cfg.average_last and self.state.snapshots:
            result.update(self._keep_average())
        if self.data.test is not None and cfg.evaluate_test and self.state.best["epoch"] > 0:
            # Every rank reloads the kept weights (best epoch or average) from the file rank 0
            # wrote; the barrier makes sure the last write has landed.
            if self.world > 1:
                dist.barrier()
            self.model.load_state_dict(read_tensors(self.run.model_weights))
            test = self._evaluate(self.data.test)
            result.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
        if self.main:
            result["plot"] = str(write_metrics(self.run, self.state.history, result, cfg))
            meta = read_json(self.run.model_meta)
            meta["result"] = {k: v for k, v in result.items() if k != "out"}
            write_json(self.run.model_meta, meta)
        return result

    def _evaluate(self, dataset: ReviewDataset) -> dict[str, float]:
        """Score ``dataset``; on the CPU its big blocks are mapped, not kept in the heap."""
        cfg = self.config
        phase = large_blocks_mapped() if self.device.type == "cpu" else contextlib.nullcontext()
        with phase:
            return evaluate(self.ddp, dataset, cfg.eval_batch_size, self.device, self.amp)

    def _keep_average(self) -> dict[str, Any]:
        """Make the mean of the last epochs' weights the run's model (``average_last``).

        Averaging the end points of a few epochs at a constant learning rate lands nearer the
        middle of the region they wander around, which generalises better than any one of
        them (Izmailov et al., "Averaging Weights Leads to Wider Optima", 2018).
        """
        snapshots = self.state.snapshots
        epochs = sorted(snapshots)
        mean = {
            name: (sum(snapshots[e][name].double() for e in epochs) / len(epochs)).to(t.dtype)
            for name, t in snapshots[epochs[-1]].items()
        }
        self.model.load_state_dict(mean)
        summary: dict[str, Any] = {"averaged_epochs": epochs, "average_val_accuracy": None}
        if self.data.val is not None:
            val = self._evaluate(self.data.val)
            summary["average_val_accuracy"] = val["accuracy"]
        self._save_kept(epochs[-1], summary["average_val_accuracy"], averaged_epochs=epochs)
        return summary

    def _save_kept(self, epoch: int, val_accuracy: float | None, **extra: Any) -> None:
        """Write the model's current weights as the run's kept model (on rank 0)."""
        if self.main:
            cfg = self.config
            meta = {"max_length": cfg.max_length, "train_config": cfg.to_dict(), "epoch": epoch}
            meta.update(extra, val_accuracy=val_accuracy)
            save_model(self.out, self.model, self.data.vocab, meta)

    def _end_epoch(self) -> None:
        cfg, s = self.config, self.state
        p = s.partial
        loss_sum, correct, count = all_reduce_sum(
            [p["loss_sum"], p["correct"], p["count"]], self.device
        )
        row: dict[str, float] = {
            "epoch": s.epoch + 1,
            "train_loss": loss_sum / max(count, 1),
            "train_accuracy": correct / max(count, 1),
            "train_reviews": count,
            "train_seconds": p["seconds"],
            "train_cpu_seconds": p["cpu_seconds"],
        }
        t0 = time.perf_counter()
        if self.data.val is not None:
            val = self._evaluate(self.data.val)
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        row["eval_seconds"] = time.perf_counter() - t0
        s.history.append(row)
        score = row.get("val_accuracy", -row["train_loss"])
        if s.best["score"] is None or score > s.best["score"]:
            s.best = {"score": score, "val_accuracy": row.get("val_accuracy"), "epoch": s.epoch + 1}
            s.stale_epochs = 0
            self._save_kept(s.epoch + 1, row.get("val_accuracy"))
        else:
            s.stale_epochs += 1
        if cfg.average_last:
            s.snapshots[s.epoch + 1] = {
                k: v.detach().clone() for k, v in self.model.state_dict().items()
            }
            for epoch in sorted(s.snapshots)[: -cfg.average_last]:
                del s.snapshots[epoch]
        s.next_epoch()
        if self.main:
            print(epoch_line(row, cfg.epochs), file=self._log_stream, flush=True)
        self._save_resume()


def seconds_to_text(s: float) -> str:
    """``75.2`` → ``"1m16s"``; ``3720`` → ``"1h02m00s"``."""
    m, s = divmod(math.ceil(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
