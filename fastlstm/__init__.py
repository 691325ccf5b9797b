"""fastlstm: a drop-in ``torch.nn.LSTM`` whose recurrence runs in fused Triton kernels."""

__version__ = "0.1.0"
