"""Functional LSTM: argument checks, the walk over layers and directions, backend dispatch.

:func:`lstm` runs a whole (multi-layer, bidirectional) LSTM, :func:`lstm_direction` one
direction of one layer; both pick a backend with ``fastlstm.backends.select_backend`` and run
each direction the one way that backend offers: the shared autograd glue
(``fastlstm.direction``) over its recurrence pair, the fused aten op, or, inside a traced
graph, the custom op of ``fastlstm.backends.compiled``. Under ``torch.onnx.export`` the whole
LSTM becomes ONNX ``LSTM`` nodes instead (``fastlstm.onnx``), whatever the backend.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import statically_known_true

from fastlstm import direction
from fastlstm.backends import REGISTRY, BackendChoice, compiled, recurrence, select_backend
from fastlstm.direction import DirectionArgs

__all__ = ["LSTMOptions", "check_lengths", "lstm", "lstm_direction", "run_lstm"]

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
    values are read once, here, and everything below uses this copy. Lengths on the CPU (as
    ``pack_padded_sequence`` takes them) cost no sync: the read is a host read and the copy
    to ``device`` is non-blocking; lengths already on a GPU cost one read there, which waits
    for the work queued before it.
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
    return lengths.to(device=device, dtype=torch.int64, non_blocking=True), host


def _check_hidden(
    hx: tuple[Tensor, Tensor],
    expected_h: tuple[int, ...],
    expected_c: tuple[int, ...],
    x: Tensor,
    traced: bool = False,
) -> None:
    if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
        got = "a single tensor" if isinstance(hx, Tensor) else type(hx).__name__
        raise ValueError(f"hx: expected a tuple (h_0, c_0) of two tensors, got {got}")
    for k, (t, shape) in enumerate(zip(hx, (expected_h, expected_c), strict=True)):
        if not isinstance(t, Tensor):
            raise ValueError(f"hx[{k}]: expected a tensor, got {type(t).__name__}")
        if traced and torch.jit.is_tracing():
            pass  # torch.jit.trace traces sizes as tensors: a check would only bake them in
        elif traced:
            # Sizes may be symbolic, the batch size of a PackedSequence even unknown until the
            # graph runs: check each dimension where its value is known, at run time otherwise.
            if t.dim() != len(shape):
                raise RuntimeError(_hidden_msg(k, t, shape))
            msg = _HIDDEN_TRACED[k]  # a constant: formatting symbolic sizes would specialise
            for got, want in zip(t.shape, shape, strict=True):
                torch._check(got == want, lambda msg=msg: msg)
        elif tuple(t.shape) != shape:
            raise RuntimeError(_hidden_msg(k, t, shape))
        if t.device != x.device:
            raise RuntimeError(
                f"hx[{k}] is on {t.device} but the input is on {x.device}; "
                "move both to the same device"
            )
        if t.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"hx[{k}] dtype ({t.dtype}) does not match input dtype ({x.dtype})")


_HIDDEN_TRACED = (
    "Expected hidden[0] size (num_layers * num_directions, batch, proj_size or hidden_size)",
    "Expected hidden[1] size (num_layers * num_directions, batch, hidden_size)",
)


def _hidden_msg(k: int, t: Tensor, shape: tuple[int, ...]) -> str:
    return f"Expected hidden[{k}] size {tuple(shape)}, got {list(t.shape)}"


@dataclasses.dataclass(frozen=True)
class LSTMOptions:
    """How :func:`lstm` runs: ``nn.LSTM``'s settings, then the backend (see :func:`lstm`)."""

    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    training: bool = False
    batch_first: bool = False
    backend: str = "auto"
    design: str | None = None


def run_lstm(
    input: Tensor,
    hx: tuple[Tensor, Tensor] | None,
    weights: Sequence[Tensor],
    lengths: Tensor | None,
    options: LSTMOptions,
) -> tuple[Tensor, tuple[Tensor, Tensor], BackendChoice]:
    """:func:`lstm` with its settings in ``options``, also returning the
    :class:`BackendChoice` that ran (``fastlstm.LSTM`` records it as ``last_backend``)."""
    num_layers, bidirectional, dropout = options.num_layers, options.bidirectional, options.dropout
    training, batch_first = options.training, options.batch_first
    backend, design = options.backend, options.design
    D = 2 if bidirectional else 1
    per = _weights_per_layer(weights, num_layers, D)
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
    traced = _traced()
    if hx is None:
        zeros = x.new_zeros
        hx = (zeros(num_layers * D, B, P), zeros(num_layers * D, B, H))
    else:
        _check_hidden(hx, (num_layers * D, B, P), (num_layers * D, B, H), x, traced)
    if _exporting_onnx():
        # The graph runs in an ONNX runtime, not on a backend: ONNX's own LSTM operator.
        from fastlstm.onnx import export_lstm

        if lengths is not None:
            _check_lengths_shape(lengths, B)
        out, h_n, c_n = export_lstm(
            x, tuple(hx), weights, per=per, num_layers=num_layers, num_directions=D,
            dropout=dropout, training=training, lengths=lengths,
        )  # fmt: skip
        if batch_first:
            out = out.transpose(0, 1)
        return out, (h_n, c_n), BackendChoice("onnx", "exporting to ONNX: ONNX's LSTM operator")
    lengths_host = None
    if lengths is not None:
        if traced:
            lengths = _check_lengths_traced(lengths, B, T, x.device)
        else:
            lengths, lengths_host = check_lengths(lengths, B, T, x.device)
            if B == 0 or min(lengths_host) == T:
                # Every sequence is full: the plain path is the same computation, and faster.
                lengths = lengths_host = None
            elif max(lengths_host) < T:
                # Past the longest sequence every output is zero: run only the steps that
                # matter, and pad the output back to T at the end.
                x = x[: max(lengths_host)]

    if _known_zero(B):
        # Nothing to compute: the reference gives empty results, and zero gradients, of the
        # right shapes on any device without asking a kernel to launch on an empty grid.
        choice = BackendChoice("reference", "empty batch")
    else:
        choice = _choose(backend, design, x, weights, H, P if has_proj else 0, B, traced)
    if not traced:
        logger.debug("fastlstm backend %r: %s", choice.name, choice.reason)
    layers = (x, hx, weights, per, num_layers, D, dropout, training, lengths, lengths_host)
    try:
        out, h_n, c_n = _run_layers(choice, traced, *layers)
    except RuntimeError as err:
        if not (backend == "auto" and choice.name == "triton" and _kernels_gave_up(err)):
            raise
        # A measured design failed to launch here: cuDNN instead, and the kernels remember
        # the failure, so the next call goes straight there.
        warnings.warn(f"fastlstm: running cuDNN instead of Triton: {err}", RuntimeWarning, 2)
        choice = BackendChoice("aten", f"the Triton kernels failed to launch: {err}")
        out, h_n, c_n = _run_layers(choice, traced, *layers)
    if out.shape[0] < T:
        out = F.pad(out, (0, 0, 0, 0, 0, T - out.shape[0]))  # [T, B, D*P], zeros past the end
    if batch_first:
        out = out.transpose(0, 1)
    return out, (h_n, c_n), choice


def _traced() -> bool:
    """Inside a graph being recorded (``torch.compile``, ``torch.export``, ``jit.trace``)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _exporting_onnx() -> bool:
    """Inside ``torch.onnx.export`` (either exporter)."""
    # torch.onnx is imported lazily, by the exporters among others: until it is, nothing
    # exports, and importing it here would cost every first call.
    onnx = sys.modules.get("torch.onnx")
    if onnx is None:
        return False
    if torch.compiler.is_dynamo_compiling():
        # Dynamo folds is_in_onnx_export() to False, also when the dynamo exporter falls back
        # to capturing with it (strict torch.export): read the flag that exporter sets.
        flags = sys.modules.get("torch.onnx._internal.exporter._flags")
        return bool(getattr(flags, "_is_onnx_exporting", False))
    return onnx.is_in_onnx_export()


def _known_zero(size) -> bool:
    """``size == 0`` where that is known: a size known only when a compiled graph runs (a
    PackedSequence's batch) is taken as non-zero (PyTorch cannot pack an empty batch)."""
    if isinstance(size, torch.SymInt):
        return statically_known_true(size == 0)
    return size == 0  # an int, or under torch.jit.trace a size traced as a tensor


def _check_lengths_shape(lengths: Tensor, batch_size) -> None:
    if not isinstance(lengths, Tensor) or lengths.dim() != 1:
        shape = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(
            f"lengths: expected a 1-D tensor of sequence lengths (one per batch element), "
            f"got {shape}"
        )
    # torch.jit.trace (and so the legacy ONNX exporter) traces sizes as tensors: no check
    # there. Compiled, the sizes may be symbolic: the check is recorded, its message a constant.
    if not torch.jit.is_tracing():
        torch._check(
            lengths.shape[0] == batch_size,
            lambda: "lengths: expected one sequence length per batch element",
        )
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths: expected an integer tensor, got dtype {lengths.dtype}")


def _check_lengths_traced(lengths: Tensor, batch_size, seq_len, device: torch.device) -> Tensor:
    """:func:`check_lengths` inside a traced graph: the values are checked when it runs.

    Lengths on the CPU (the usual place, as ``pack_padded_sequence`` wants them) are checked by
    ``torch._assert_async``, which raises the message below when the graph runs, with no host
    read at trace time. Lengths on an accelerator would make it a device-side assert, which
    leaves the device unusable, so there the values are read back (one sync, as in eager mode)
    and checked with ``torch._check``, which also tells the compiler their range.
    ``torch.jit.trace`` would record neither check (it keeps no asserts): none is made.
    """
    if torch.jit.is_tracing():
        return lengths.to(device=device, dtype=torch.int64)
    _check_lengths_shape(lengths, batch_size)
    # A symbolic length would be specialised by formatting it into the message.
    T = seq_len if isinstance(seq_len, int) else "T"
    message = f"lengths: every length must be between 1 and the sequence length {T}"
    if not _known_zero(batch_size):
        if lengths.device.type == "cpu":
            ok = (lengths.min() >= 1) & (lengths.max() <= seq_len)
            torch._assert_async(ok, message)
        else:
            lo, hi = torch.stack(torch.aminmax(lengths)).tolist()  # one device read, not two
            torch._check(lo >= 1, lambda: message)
            torch._check(hi <= seq_len, lambda: message)
    return lengths.to(device=device, dtype=torch.int64)


def _kernels_gave_up(err: RuntimeError) -> bool:
    from fastlstm.kernels import KernelLaunchError  # imported already: triton just ran

    return isinstance(err, KernelLaunchError)


def _choose(backend, design, x, weights, hidden, proj, batch, traced) -> BackendChoice:
    autocast = torch.is_autocast_enabled(x.device.type)
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    transformed = not traced and any(is_wrapped(t) for t in (x, *weights))
    # Under autocast the recurrence runs in the autocast dtype: ask about that one.
    run_dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
    # A PackedSequence's batch size in a traced graph is known only when the graph runs (it
    # is data): choose as for a batch of 1. A named Triton backend then lets the kernels pick
    # their design at run time from the real batch (they check each design against it and
    # fall back); auto does not run Triton there, since no measurement is known to apply.
    unknown_batch = isinstance(batch, torch.SymInt) and not batch.node.has_hint()
    choice = select_backend(
        backend,
        x.device,
        run_dtype,
        hidden,
        proj,
        batch_size=1 if unknown_batch else batch,
        design=design,
        compiling=traced,
        transformed=transformed,
    )
    if unknown_batch and backend == "auto" and choice.name == "triton":
        return BackendChoice("reference", "batch size known only when the graph runs")
    return choice


def _direction_runner(choice: BackendChoice, traced: bool):
    """``run(args: DirectionArgs, lengths_host) -> out, h_n, c_n``: one direction the way
    ``choice``'s backend runs it."""
    entry = REGISTRY[choice.name]
    if traced:
        return lambda a, lengths_host: compiled.run_direction(
            a, choice.name, choice.designs, choice.pinned
        )
    if entry.run_direction is not None:
        return entry.run_direction
    rec = recurrence(choice.name, choice.designs, choice.pinned)
    return lambda a, lengths_host: direction.run_direction(rec, a)


def _run_layers(
    choice, traced, x, hx, weights, per, num_layers, D, dropout, training, lengths, lengths_host
) -> tuple[Tensor, Tensor, Tensor]:
    """Every layer and direction of padded ``x [T, B, I]`` on ``choice``'s backend."""
    entry = REGISTRY[choice.name]
    has_biases = per in (4, 5)
    if entry.run_stack is not None and lengths is None and not traced:
        return entry.run_stack(
            x, tuple(hx), list(weights), has_biases, num_layers, dropout, training, D == 2
        )
    run = _direction_runner(choice, traced)
    h0, c0 = hx
    layer_in = x
    h_ns, c_ns = [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            w = weights[k * per : (k + 1) * per]
            b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
            w_hr = w[-1] if per in (3, 5) else None
            a = DirectionArgs(layer_in, w[0], w[1], b_ih, b_hh, w_hr, h0[k], c0[k], lengths, d == 1)
            out_d, h_d, c_d = run(a, lengths_host)
            outs.append(out_d)
            h_ns.append(h_d)
            c_ns.append(c_d)
        layer_in = outs[0] if D == 1 else torch.cat(outs, -1)  # [T, B, D*P]
        if dropout > 0 and training and layer < num_layers - 1:
            layer_in = F.dropout(layer_in, dropout, training=True)
    return layer_in, torch.stack(h_ns), torch.stack(c_ns)


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
    design: str | None = None,
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
        design: with ``backend="triton"``, pin one kernel design (``"persistent"``,
            ``"step"``, ``"batch"``): no fallback, for measuring one design.

    Returns:
        ``output [T, B, D*P]`` (batch-first if requested) and ``(h_n, c_n)``.
    """
    options = LSTMOptions(
        num_layers, bidirectional, dropout, training, batch_first, backend, design
    )
    out, state, _ = run_lstm(input, hx, weights, lengths, options)
    return out, state


def _check_shape(name: str, t: Tensor | None, expected: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {list(expected)}, got {list(t.shape)}")


def _check_direction_args(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D [T, B, I], got shape {list(x.shape)}")
    T, B, I = x.shape
    if T == 0 or B == 0:
        raise ValueError(f"x must have T >= 1 and B >= 1, got shape {list(x.shape)}")
    if w_ih.dim() != 2 or w_ih.shape[0] % 4 != 0:
        raise ValueError(f"w_ih must be [4H, I], got shape {list(w_ih.shape)}")
    H = w_ih.shape[0] // 4
    P = H if w_hr is None else w_hr.shape[0]
    _check_shape("w_ih", w_ih, (4 * H, I))
    _check_shape("w_hh", w_hh, (4 * H, P))
    _check_shape("w_hr", w_hr, (P, H))
    _check_shape("b_ih", b_ih, (4 * H,))
    _check_shape("b_hh", b_hh, (4 * H,))
    _check_shape("h0", h0, (B, P))
    _check_shape("c0", c0, (B, H))
    named = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "w_hr": w_hr, "b_ih": b_ih, "b_hh": b_hh}
    named.update(h0=h0, c0=c0)
    for name, t in named.items():
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, expected {x.device} like x")
        if t.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {t.dtype}, expected {x.dtype} like x")


def lstm_direction(
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    w_hr: Tensor | None = None,
    h0: Tensor | None = None,
    c0: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
    *,
    backend: str = "auto",
    design: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one LSTM layer (differentiable): the primitive every backend serves.

    The input projection is one GEMM, the time loop runs on the backend (for ``triton`` one
    kernel launch), and backward runs the loop backwards, then GEMMs for the weight, input
    and bias gradients. State and accumulation are fp32 whatever the input dtype. Under
    ``torch.autocast`` the floating inputs are cast to the autocast dtype first, as autocast
    does for ``nn.LSTM``.

    Args:
        x: ``[T, B, I]`` padded input.
        w_ih: ``[4H, I]``; w_hh: ``[4H, P]`` weights, gate order i, f, g, o.
        b_ih, b_hh: ``[4H]`` biases, or None.
        w_hr: ``[P, H]`` projection weight (``proj_size = P``), or None (``P = H``).
        h0, c0: ``[B, P]`` and ``[B, H]`` initial state; zeros when None.
        lengths: ``[B]`` integer valid lengths in ``[1, T]`` (on the CPU to spare a sync),
            or None when every sequence has length ``T``.
        reverse: run each sequence backwards, starting at its own last valid step.
        backend: ``"auto"``, ``"reference"``, ``"aten"`` or ``"triton"``.
        design: with ``backend="triton"``, pin one kernel design (no fallback).

    Returns:
        ``out [T, B, P]`` (zero past each length), ``h_n [B, P]`` and ``c_n [B, H]`` taken at
        each sequence's last valid step.

    Raises:
        ValueError: shapes, dtypes, devices or lengths that do not fit together.
        RuntimeError: a named backend (or design) that cannot serve the call, saying why.
    """
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = direction.autocast_inputs(
        (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0), x.device.type
    )
    _check_direction_args(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)
    T, B, _ = x.shape
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    h0 = x.new_zeros(B, P) if h0 is None else h0
    c0 = x.new_zeros(B, H) if c0 is None else c0
    traced = _traced()
    lengths_host = None
    if lengths is not None:
        if traced:
            lengths = lengths.to(device=x.device, dtype=torch.int64)
        else:
            lengths, lengths_host = check_lengths(lengths, B, T, x.device)
    weights = [t for t in (w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None]
    proj = 0 if w_hr is None else P
    choice = _choose(backend, design, x, weights, H, proj, B, traced)
    a = DirectionArgs(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, bool(reverse))
    return _direction_runner(choice, traced)(a, lengths_host)
