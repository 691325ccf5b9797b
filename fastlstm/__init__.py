"""fastlstm: a drop-in ``torch.nn.LSTM`` whose recurrence runs in fused Triton kernels.

Swap ``torch.nn.LSTM`` for :class:`fastlstm.LSTM`; everything else stays the same.
"""

from fastlstm import _checkout  # noqa: F401  (first: fastlstm.kernels in a plain checkout)
from fastlstm.backends import BACKENDS, select_backend
from fastlstm.functional import lstm
from fastlstm.module import LSTM

# Imported for its effect: quantize_dynamic(model, {fastlstm.LSTM}) finds the quantized
# counterpart in torch's default dynamic mapping, which fastlstm.quantized extends.
from fastlstm.quantized import DynamicQuantizedLSTM  # noqa: F401

__version__ = "0.1.0"

__all__ = ["BACKENDS", "LSTM", "__version__", "lstm", "select_backend"]
