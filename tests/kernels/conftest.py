"""Fixtures for the kernel tests.

Without CUDA the kernels run on CPU tensors through Triton's interpreter, which needs
``TRITON_INTERPRET=1`` before triton is first imported; this file sets it (the top-level
conftest does too) so that ``pytest tests/kernels`` works on its own.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from fastlstm.kernels import common, dispatch, launch


@pytest.fixture(
    params=[
        pytest.param(
            "cpu",
            id="interp",
            marks=pytest.mark.skipif(
                not launch.interpreting(), reason="CPU tensors need TRITON_INTERPRET=1"
            ),
        ),
        pytest.param(
            "cuda",
            id="cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
            ],
        ),
    ]
)
def device(request) -> torch.device:
    """The interpreter on CPU tensors (CI), and a real GPU where there is one."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def poison_buffers(monkeypatch):
    """NaN-fill every buffer the launchers allocate (``kernels.common.empty``), so an element
    a kernel never writes (an output, or a scratch value read before it is initialised)
    fails the comparison."""

    def nan_empty(*shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(common, "empty", nan_empty)


@pytest.fixture(params=["default", "tiny"])
def tiles(request, monkeypatch):
    """Run with the real launch settings, and with 16-wide tiles everywhere so that small
    shapes walk several hidden tiles, K-chunks and batch tiles."""
    if request.param == "tiny":
        tiny = launch.BatchConfig(block_b=16, block_h=16, block_k=16, num_warps=4)
        monkeypatch.setattr(dispatch, "batch_config", lambda *args, **kwargs: tiny)
    return request.param


def _set_tf32(on: bool) -> tuple[bool, bool]:
    """Set both TF32 switches; return the old values.

    ``torch.backends.cudnn.allow_tf32`` is the one the kernels follow (as cuDNN's
    ``nn.LSTM`` does); ``torch.backends.cuda.matmul.allow_tf32`` governs the input GEMMs
    and the reference's matmuls on CUDA, so a comparison sets both the same way. Set and
    restored by hand: the flags live on module objects with a custom ``__setattr__``,
    which pytest's monkeypatch cannot always undo.
    """
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = on
    return old


@pytest.fixture(autouse=True)
def exact_fp32():
    """Every kernel test compares fp32 like with like: TF32 off (``"ieee"`` dots) on both
    sides, unless the test asks for :func:`tf32`, which runs after this fixture."""
    old = _set_tf32(False)
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture
def tf32(exact_fp32):
    """TF32 on (PyTorch's default for cuDNN): fp32 dots in the kernels and cuDNN use TF32."""
    _set_tf32(True)
    yield
