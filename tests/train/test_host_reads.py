"""The trainer never waits for the device inside a training step.

Reading a tensor's value on the host (``float(t)``, ``t.item()``, ``t.tolist()``, ``bool(t)``,
...) or copying it to the CPU makes the host wait until the device has run every queued
kernel, so the GPU idles while the host prepares the next step. The trainer keeps its
running sums on the device and reads them once per log interval (``log_every``) and at the
end of an epoch. These tests count such reads made by code in ``fastlstm/train/`` while a
tiny model trains on the synthetic corpus. On the CPU the same calls are made as on a GPU,
so counting the calls counts the waits a GPU run would have; a copy to the CPU (``.cpu()``,
``.to("cpu")``) only counts from a tensor that is not already on the CPU (a GPU run).
"""

from __future__ import annotations

import collections
import io
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

import fastlstm.train
from fastlstm.data import load_corpus, write_synthetic_imdb
from fastlstm.train import TrainConfig, Trainer, build_datasets, evaluate, predict_texts

TRAIN_DIR = Path(fastlstm.train.__file__).resolve().parent
# Calls that hand a tensor's value to Python: each waits for the device.
VALUE_READS = {
    Tensor.item,
    Tensor.tolist,
    Tensor.numpy,
    Tensor.__bool__,
    Tensor.__float__,
    Tensor.__int__,
    Tensor.__index__,
}
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]


def _target(args: tuple, kwargs: dict[str, Any]) -> torch.device | None:
    """The device ``Tensor.to(*args, **kwargs)`` copies to (None: a dtype change only)."""
    target = kwargs.get("device")
    for arg in args[1:]:
        if isinstance(arg, Tensor):
            target = arg.device
        elif isinstance(arg, str | torch.device):
            target = arg
    return None if target is None else torch.device(target)


class HostReads(TorchFunctionMode):
    """Records every read of a tensor to the host made directly by code in fastlstm/train/.

    ``phase`` labels the records: the tests set it from the trainer's ``on_step`` callback.
    Each record is ``(phase, "file:function", call)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.phase: Any = "setup"
        self.records: list[tuple[Any, str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._is_read(func, args, kwargs):
            caller = sys._getframe(1).f_code
            path = Path(caller.co_filename).resolve()
            if path.parent == TRAIN_DIR:
                self.records.append((self.phase, f"{path.name}:{caller.co_name}", func.__name__))
        return func(*args, **kwargs)

    @staticmethod
    def _is_read(func, args: tuple, kwargs: dict[str, Any]) -> bool:
        if func in VALUE_READS:
            return True
        if func is Tensor.cpu or func is Tensor.to:
            target = torch.device("cpu") if func is Tensor.cpu else _target(args, kwargs)
            source = args[0]
            return target is not None and target.type == "cpu" and source.device.type != "cpu"
        return False

    def in_phase(self, phase: Any) -> list[tuple[str, str]]:
        return [(where, call) for p, where, call in self.records if p == phase]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("imdb")
    return load_corpus(write_synthetic_imdb(root, n_per_class=40, seed=0), use_cache=False)


def _config(out: Path, device: str, **kw: Any) -> TrainConfig:
    base = dict(
        out=str(out),
        embedding_dim=8,
        hidden_size=6,
        bidirectional=True,
        dropout=0.1,
        token_dropout=0.1,
        vocab_max_size=None,
        batch_size=16,
        eval_batch_size=16,
        epochs=2,
        evaluate_test=False,
        average_last=None,
        threads=1,
        seed=0,
        device=device,
    )
    return TrainConfig(**{**base, **kw})


def _train(config: TrainConfig, corpus, log: io.StringIO) -> tuple[HostReads, int]:
    """Train ``config`` under :class:`HostReads`; returns the reads and the steps per epoch.

    Phase ``(epoch, k)`` holds what was read while step ``k`` (from 1) of ``epoch`` ran; phase
    ``(epoch, steps + 1)`` what was read after its last step (the epoch's end, and the first
    step of the next epoch, which must read nothing either).
    """
    data = build_datasets(config, corpus)
    reads = HostReads()
    reads.phase = (0, 1)

    def next_phase(trainer: Trainer, epoch: int, step: int) -> None:
        reads.phase = (epoch, step + 1)

    trainer = Trainer(config, data, on_step=next_phase, log=log)
    with reads:
        trainer.fit()
    return reads, len(trainer.sampler)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_counter_sees_a_read_from_the_trainers_code():
    """The test can fail: a read in a file of fastlstm/train/ is recorded, one elsewhere not."""
    reads = HostReads()
    code = compile("float(t); t.tolist()", str(TRAIN_DIR / "loop.py"), "exec")
    with reads:
        exec(code, {"t": torch.ones(2).sum()})
        float(torch.ones(2).sum())  # this test file: not the trainer's
    assert [call for _, _, call in reads.records] == ["__float__", "tolist"]


@pytest.mark.parametrize("device", DEVICES)
def test_training_steps_read_nothing_from_the_device(tmp_path, corpus, device):
    # Without a terminal no progress bar is drawn: nothing needs the running metrics before
    # the end of the epoch, whatever the log interval.
    config = _config(tmp_path / "run", device, log_every=1000)
    reads, steps = _train(config, corpus, io.StringIO())
    assert steps >= 4
    for epoch in range(config.epochs):
        for k in range(1, steps + 1):
            assert reads.in_phase((epoch, k)) == [], (epoch, k)
        # After the last step: the epoch's running sums once, the validation sums once.
        end = reads.in_phase((epoch, steps + 1))
        values = collections.Counter(where for where, call in end if call != "cpu")
        assert values == {"loop.py:read": 1, "distributed.py:sum_to_host": 1}, end
        # Copies to the CPU at the epoch's end (a GPU run) only write the checkpoint files.
        assert all(where.startswith("checkpoint.py:") for where, call in end if call == "cpu")
    assert reads.in_phase("setup") == []


@pytest.mark.parametrize("device", DEVICES)
def test_the_progress_bar_reads_once_per_log_interval(tmp_path, corpus, device):
    config = _config(tmp_path / "run", device, log_every=2, epochs=1)
    log = _Terminal()
    reads, steps = _train(config, corpus, log)
    per_step = [len(reads.in_phase((0, k))) for k in range(1, steps + 1)]
    # One read per interval, and one at the last step (the bar's final figures, which are also
    # the epoch's: no second read for them).
    assert per_step == [int(k % 2 == 0 or k == steps) for k in range(1, steps + 1)], per_step
    assert [where for where, _ in reads.in_phase((0, steps + 1))] == [
        "distributed.py:sum_to_host"  # the validation sums
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_and_predict_read_once_per_call(tmp_path, corpus, device):
    config = _config(tmp_path / "run", device, epochs=1)
    data = build_datasets(config, corpus)
    trainer = Trainer(config, data, log=io.StringIO())
    trainer.fit()
    reads = HostReads()
    with reads:
        evaluate(trainer.model, data.val, batch_size=2, device=device)
    assert len(data.val) > 2
    assert [where for _, where, _ in reads.records] == ["distributed.py:sum_to_host"]

    reads = HostReads()
    texts = ["a wonderful film", "dull and boring", "great plot", "awful acting"]
    with reads:
        predict_texts(trainer.model, data.vocab, texts, batch_size=1, device=device)
    # encode_reviews checks each review's words on the CPU before anything reaches a device;
    # scoring reads the probabilities once for all batches.
    assert [where for _, where, _ in reads.records if "encode" not in where] == [
        "predict.py:predict_texts"
    ]
