"""Functional LSTM: argument checks, the walk over layers and directions, backend dispatch."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fastlstm.backends import REGISTRY, BackendChoice, compiled, select_backend

__all__ = ["check_lengths", "lstm", "lstm_with_backend"]

logger = logging.getLogger("fastlstm")


def _weights_per_layer(weights: Sequence[Tensor], num_layers: int, num_directions: int) -> int:
    per = len(weights) / (num_layers * num_directions)
    if per not in (2, 3, 4, 5):
        raise ValueError(
            f"weights: expected 2 to 5 tensors per layer and direction in nn.LSTM's "
            f"_flat_weights order, got {len(weights)} for {num_layers} layer(s) and "
            f"{num_directions} direction(s)"
        )
    return int(per)


def check_lengths(
    lengths: Tensor, batch_size: int, seq_len: int, device: torch.device
) -> tuple[Tensor, list[int]]:
    """Validate ``lengths``; return it as int64 on ``device`` and its values on the host.

    Every length must lie in ``[1, seq_len]``: a sequence of length zero has no last valid
    step to take ``h_n`` from (``nn.utils.rnn.pack_padded_sequence`` rejects it too). The
    values are read to the host once, here; everything below uses this copy instead of
    reading the tensor again (each read of a CUDA tensor stalls the launch queue).
    """
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.shape[0] != batch_size:
        raise ValueError(
            f"lengths: expected a 1-D tensor of {batch_size} sequence lengths (one per batch "
            f"element), got shape {tuple(lengths.shape)}"
        )
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths: expected an integer tensor, got dtype {lengths.dtype}")
    host = lengths.tolist()  # the one device-to-host read of the call
    if host:
        lo, hi = min(host), max(host)
        if lo < 1 or hi > seq_len:
            raise ValueError(
                f"lengths: every length must be between 1 and the sequence length {seq_len}, "
                f"got values from {lo} to {hi}"
            )
    return lengths.to(device=device, dtype=torch.int64), host


def _check_hidden(
    hx: tuple[Tensor, Tensor], expected_h: tuple[int, ...], expected_c: tuple[int, ...], x: Tensor
) -> None:
    if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
        got = "a single tensor" if isinstance(hx, Tensor) else type(hx).__name__
        raise ValueError(f"hx: expected a tuple (h_0, c_0) of two tensors, got {got}")
    for k, (t, shape) in enumerate(zip(hx, (expected_h, expected_c), strict=True)):
        if not isinstance(t, Tensor):
            raise ValueError(f"hx[{k}]: expected a tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise RuntimeError(f"Expected hidden[{k}] size {shape}, got {list(t.shape)}")
        if t.device != x.device:
            raise RuntimeError(
                f"hx[{k}] is on {t.device} but the input is on {x.device}; "
                "move both to the same device"
            )
        if t.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"hx[{k}] dtype ({t.dtype}) does not match input dtype ({x.dtype})")


def lstm_with_backend(
    input: Tensor,
    hx: tuple[Tensor, Tensor] | None,
    weights: Sequence[Tensor],
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    batch_first: bool = False,
    lengths: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor], BackendChoice]:
    """:func:`lstm`, also returning the :class:`BackendChoice` that ran."""
    D = 2 if bidirectional else 1
    per = _weights_per_layer(weights, num_layers, D)
    has_biases = per in (4, 5)
    has_proj = per in (3, 5)
    w_ih0, w_hh0 = weights[0], weights[1]
    H = w_hh0.shape[0] // 4
    P = w_hh0.shape[1]
    if input.dim() != 3:
        raise ValueError(
            f"input: expected a 3-D tensor {'[B, T, I]' if batch_first else '[T, B, I]'}, "
            f"got {input.dim()}-D with shape {tuple(input.shape)}"
        )
    x = input.transpose(0, 1) if batch_first else input  # [T, B, I]
    T, B, I = x.shape
    if w_ih0.shape[1] != I:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {w_ih0.shape[1]}, got {I}"
        )
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if not x.is_floating_point():
        raise ValueError(f"input: expected a floating-point tensor, got dtype {x.dtype}")
    autocast = torch.is_autocast_enabled(x.device.type)
    for w in weights:
        if w.device != x.device:
            raise RuntimeError(
                f"input is on {x.device} but the LSTM weights are on {w.device}; "
                f"move the input with input.to({str(w.device)!r}) or the model with "
                f"model.to({str(x.device)!r})"
            )
        if w.dtype != x.dtype and not autocast:
            raise ValueError(
                f"RNN input dtype ({x.dtype}) does not match weight dtype ({w.dtype}). "
                f"Convert input: input.to({w.dtype}), or convert model: model.to({x.dtype})"
            )
    if hx is None:
        zeros = x.new_zeros
        hx = (zeros(num_layers * D, B, P), zeros(num_layers * D, B, H))
    else:
        _check_hidden(hx, (num_layers * D, B, P), (num_layers * D, B, H), x)
    compiling = torch.compiler.is_compiling()
    lengths_host = None
    if lengths is not None:
        if compiling:
            # Value checks would read the tensor back and break the graph.
            lengths = lengths.to(device=x.device, dtype=torch.int64)
        else:
            lengths, lengths_host = check_lengths(lengths, B, T, x.device)
            if B == 0 or min(lengths_host) == T:
                # Every sequence is full: the plain path is the same computation, and faster.
                lengths = lengths_host = None
            elif max(lengths_host) < T:
                # Past the longest sequence every output is zero: run only the steps that
                # matter, and pad the output back to T at the end.
                x = x[: max(lengths_host)]

    if B == 0:
        # Nothing to compute: the reference gives empty results, and zero gradients, of the
        # right shapes on any device without asking a kernel to launch on an empty grid.
        choice = BackendChoice("reference", "empty batch")
    else:
        is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
        transformed = not compiling and any(is_wrapped(t) for t in (x, *weights))
        # Under autocast the recurrence runs in the autocast dtype: ask about that one.
        run_dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        choice = select_backend(
            backend,
            x.device,
            run_dtype,
            H,
            P if has_proj else 0,
            compiling=compiling,
            transformed=transformed,
        )
    entry = REGISTRY[choice.name]
    if not compiling:
        logger.debug("fastlstm backend %r: %s", choice.name, choice.reason)

    if entry.run_stack is not None and lengths is None and not compiling:
        out, h_n, c_n = entry.run_stack(
            x, tuple(hx), list(weights), has_biases, num_layers, dropout, training, bidirectional
        )
    else:
        h0, c0 = hx
        layer_in = x
        h_ns, c_ns = [], []
        for layer in range(num_layers):
            outs = []
            for direction in range(D):
                k = layer * D + direction
                w = weights[k * per : (k + 1) * per]
                b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
                w_hr = w[-1] if has_proj else None
                args = (layer_in, w[0], w[1], b_ih, b_hh, w_hr, h0[k], c0[k], lengths)
                if compiling:
                    # Under torch.compile every direction runs through the opaque custom op.
                    out_d, h_d, c_d = compiled.run_direction(
                        *args, direction == 1, backend=choice.name
                    )
                else:
                    out_d, h_d, c_d = entry.run_direction(*args, direction == 1, lengths_host)
                outs.append(out_d)
                h_ns.append(h_d)
                c_ns.append(c_d)
            layer_in = outs[0] if D == 1 else torch.cat(outs, -1)  # [T, B, D*P]
            if dropout > 0 and training and layer < num_layers - 1:
                layer_in = F.dropout(layer_in, dropout, training=True)
        out, h_n, c_n = layer_in, torch.stack(h_ns), torch.stack(c_ns)
    if out.shape[0] < T:
        out = F.pad(out, (0, 0, 0, 0, 0, T - out.shape[0]))  # [T, B, D*P], zeros past the end
    if batch_first:
        out = out.transpose(0, 1)
    return out, (h_n, c_n), choice


def lstm(
    input: Tensor,
    hx: tuple[Tensor, Tensor] | None,
    weights: Sequence[Tensor],
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    batch_first: bool = False,
    lengths: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Run a (multi-layer, optionally bidirectional) LSTM over padded input.

    The functional form of :class:`fastlstm.LSTM`, with the same semantics as
    ``torch.nn.LSTM`` on padded input.

    Args:
        input: ``[T, B, I]`` (or ``[B, T, I]`` with ``batch_first``).
        hx: ``(h_0 [L*D, B, P], c_0 [L*D, B, H])`` or None for zeros.
        weights: per layer and direction ``w_ih, w_hh[, b_ih, b_hh][, w_hr]``, in the order
            of ``nn.LSTM._flat_weights`` (layer-major, forward direction first).
        num_layers, bidirectional, dropout, training, batch_first: as ``nn.LSTM``; dropout
            is applied between layers in training mode only.
        lengths: optional ``[B]`` integer lengths in ``[1, T]``. Outputs past a sequence's
            length are zero, its state stops at its last valid step (which ``h_n``/``c_n``
            report), and the reverse direction starts there; the same results as
            ``nn.LSTM`` on the equivalent ``PackedSequence``.
        backend: ``"auto"``, ``"reference"``, ``"aten"`` or ``"triton"``.

    Returns:
        ``output [T, B, D*P]`` (batch-first if requested) and ``(h_n, c_n)``.
    """
    out, state, _ = lstm_with_backend(
        input,
        hx,
        weights,
        num_layers=num_layers,
        bidirectional=bidirectional,
        dropout=dropout,
        training=training,
        batch_first=batch_first,
        lengths=lengths,
        backend=backend,
    )
    return out, state
