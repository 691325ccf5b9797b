"""No host sync in the steady state: nothing on the Triton path reads the device per call.

A read of a CUDA tensor's value on the host (``.item()``, ``int()``, ``bool()``, ...) waits
for every kernel queued before it: launch-ahead stops and CUDA-graph capture
(``torch.compile(mode="reduce-overhead")``) breaks. On the CPU, under the interpreter, every
such conversion on the forward+backward path is counted, with the function that made it. The
one allowed kind is the dispatcher's lazy read of a persistent kernel's barrier flag: on a
GPU that flag is copied to pinned host memory behind the kernel and read only once the copy
has landed (``event.query()``), at a later call, so it never waits (the CUDA test proves it
with ``torch.cuda.set_sync_debug_mode("error")``).
"""

from __future__ import annotations

import inspect

import pytest
import torch

import fastlstm
from fastlstm.kernels import dispatch, launch

from helpers import backend_why_not

TRITON = pytest.mark.skipif(
    backend_why_not("triton") is not None, reason=str(backend_why_not("triton"))
)


class HostReads:
    """Counts tensor -> Python conversions, each with the function that asked for it."""

    METHODS = ("item", "tolist", "__int__", "__bool__", "__index__", "__float__")

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def counted(t, *args, _name=name, _original=original):
                caller = inspect.stack()[1].function
                self.calls.append(f"{_name} in {caller}")
                return _original(t, *args)

            monkeypatch.setattr(torch.Tensor, name, counted)


def _model(design: str, device="cpu", proj_size=0):
    torch.manual_seed(0)
    return fastlstm.LSTM(
        8, 20, num_layers=2, bidirectional=True, proj_size=proj_size, backend="triton",
        design=design, device=device,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_dispatcher(monkeypatch):
    monkeypatch.setattr(dispatch, "_FAILED", {})
    monkeypatch.setattr(dispatch, "_PENDING", [])


@TRITON
@pytest.mark.parametrize("design", ["batch", "step", "persistent"])
@pytest.mark.parametrize("proj_size", [0, 6], ids=["noproj", "P6"])
def test_forward_backward_reads_nothing_from_the_device(design, proj_size):
    """Forward+backward of a 2-layer bidirectional LSTM, CPU lengths included: the only
    conversions are the barrier flags of earlier persistent launches, read lazily."""
    model = _model(design, proj_size=proj_size)
    x = torch.randn(5, 3, 8, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])  # on the host, as pack_padded_sequence takes them
    with pytest.MonkeyPatch.context() as patch:
        reads = HostReads(patch)
        out, (h, c) = model(x)
        (out.sum() + h.sum() + c.sum()).backward()
        no_lengths = list(reads.calls)
        out, (h, c) = model(x, lengths=lengths)
        (out.sum() + h.sum() + c.sum()).backward()
    flag_reads = [c for c in reads.calls if c.endswith("in _read_barrier_flags")]
    others = [c for c in reads.calls if c not in flag_reads]
    # The lengths' values come from the host tensor: one tolist() of a CPU tensor per call.
    assert others.count("tolist in check_lengths") == 1, reads.calls
    assert [c for c in others if c != "tolist in check_lengths"] == [], reads.calls
    assert "tolist in check_lengths" not in no_lengths
    if design == "persistent":
        # 4 directions x 2 passes launched persistent kernels; each flag is read at a later
        # call (never the one that launched it), and the last one stays pending.
        assert len(flag_reads) == 2 * 4 * 2 - 1, reads.calls
        assert len(dispatch._PENDING) == 1
    else:
        assert flag_reads == []


@TRITON
def test_a_flag_is_read_only_after_its_copy_landed():
    """On a GPU the flag is read once its event completes; until then it stays pending."""

    class NotYet:
        def query(self) -> bool:
            return False

    config = dispatch._config(torch.device("cpu"), "persistent", torch.float32, 2, 16, 0)
    flag = torch.ones(1, dtype=torch.int32)  # a timed-out barrier
    dispatch._PENDING.append((config, flag, NotYet()))
    with pytest.MonkeyPatch.context() as patch:
        reads = HostReads(patch)
        dispatch._read_barrier_flags()
    assert reads.calls == [] and len(dispatch._PENDING) == 1
    dispatch._PENDING[0] = (config, flag, None)
    with pytest.warns(RuntimeWarning, match="grid barrier timed out"):
        dispatch._read_barrier_flags()
    assert config in dispatch._FAILED and dispatch._PENDING == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("design", ["batch", "step", "persistent"])
@pytest.mark.parametrize("proj_size", [0, 48], ids=["noproj", "P48"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_no_sync_on_the_gpu(design, proj_size, dtype):
    """Forward+backward of every design, steady state, under sync_debug_mode("error")."""
    torch.manual_seed(0)
    model = fastlstm.LSTM(
        64, 128, num_layers=2, bidirectional=True, proj_size=proj_size, backend="triton",
        design=design, device="cuda", dtype=dtype,
    )  # fmt: skip
    x = torch.randn(32, 16, 64, device="cuda", dtype=dtype, requires_grad=True)
    why = launch.why_not(x.device, dtype, 128, proj_size, batch=16, design=design)
    if why is not None:
        pytest.skip(why)
    for _ in range(2):  # the first call compiles and allocates; the second is steady
        out, (h, c) = model(x)
        (out.float().sum() + h.float().sum() + c.float().sum()).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, (h, c) = model(x)
        (out.float().sum() + h.float().sum() + c.float().sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
