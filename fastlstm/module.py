"""``fastlstm.LSTM``: a drop-in ``torch.nn.LSTM`` that dispatches to a fast backend."""

# No ``from __future__ import annotations`` here: TorchScript reads the annotations of the
# scripted methods below and cannot resolve them as strings.

from typing import overload

import torch
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fastlstm.backends import BACKENDS, DESIGNS
from fastlstm.functional import LSTMOptions, run_lstm

__all__ = ["LSTM"]


def packed_to_padded(packed: PackedSequence) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Unpack in the caller's batch order with one scatter.

    Returns ``padded [T, B, *]``, ``lengths [B]`` and the ``(t, b)`` index pair of every
    packed row, which :func:`padded_to_packed` reuses to pack the output the same way.
    """
    data, batch_sizes = packed.data, packed.batch_sizes  # [N, *], [T] (on the CPU)
    T = batch_sizes.numel()
    if packed.sorted_indices is not None and torch.compiler.is_compiling():
        # In a traced graph batch_sizes[0] is data, known only when the graph runs; the
        # permutation's length is a size the compiler knows.
        B = packed.sorted_indices.shape[0]
    else:
        B = int(batch_sizes[0])
        torch._check(B >= 1)  # no empty PackedSequence exists; traced, the size needs saying
    # [N]; output_size spares the traced graph a size known only from the data.
    t_idx = torch.repeat_interleave(torch.arange(T), batch_sizes, output_size=data.shape[0])
    starts = torch.cumsum(batch_sizes, 0) - batch_sizes  # [T]
    rank = torch.arange(data.shape[0]) - starts[t_idx]  # position within the sorted batch
    sorted_lengths = (batch_sizes.unsqueeze(0) > torch.arange(B).unsqueeze(1)).sum(1)  # [B]
    if packed.sorted_indices is None:
        b_idx, lengths = rank, sorted_lengths
    else:
        order = packed.sorted_indices.cpu()
        b_idx = order[rank]
        lengths = torch.empty_like(sorted_lengths)
        lengths[order] = sorted_lengths
    # One host-to-device copy for both index vectors (each copy stalls a CUDA stream).
    t_idx, b_idx = torch.stack([t_idx, b_idx]).to(data.device).unbind(0)
    padded = data.new_zeros(T, B, *data.shape[1:])
    padded = padded.index_put((t_idx, b_idx), data)
    return padded, lengths, t_idx, b_idx


def padded_to_packed(
    padded: Tensor, like: PackedSequence, t_idx: Tensor, b_idx: Tensor
) -> PackedSequence:
    """Pack ``padded [T, B, *]`` with the layout (and sort order) of ``like``."""
    return PackedSequence(
        padded[t_idx, b_idx], like.batch_sizes, like.sorted_indices, like.unsorted_indices
    )


class LSTM(nn.RNNBase):
    """A drop-in replacement for :class:`torch.nn.LSTM` that runs on a faster backend.

    Same constructor, parameters (names, shapes, initialisation), ``state_dict``, forward
    signature and return types as ``torch.nn.LSTM``. It derives from ``nn.RNNBase`` in
    ``"LSTM"`` mode (exactly what ``nn.LSTM`` is) rather than from ``nn.LSTM`` itself,
    because ``torch.compile`` refuses to trace any ``nn.LSTM`` instance; so
    ``isinstance(m, nn.LSTM)`` is False, while ``isinstance(m, nn.RNNBase)`` holds.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
        proj_size, device, dtype: exactly as :class:`torch.nn.LSTM`.
        backend: keyword-only; ``"auto"`` (default) picks the fastest correct backend for
            each call's device, dtype and shape, ``"reference"`` runs the pure-PyTorch
            implementation, ``"aten"`` the fused op that ``nn.LSTM`` runs, ``"triton"`` the
            fused Triton kernels. A named backend that cannot serve a call raises an error.
        design: keyword-only, with ``backend="triton"``: pin one kernel design
            (``"persistent"``, ``"step"`` or ``"batch"``, see docs/kernels.md) instead of the
            measured or modelled choice, with no fallback: for measuring one design.

    Forward:
        ``forward(input, hx=None, lengths=None)``. ``input`` is ``[T, B, I]``,
        ``[B, T, I]`` with ``batch_first``, unbatched ``[T, I]``, or a ``PackedSequence``.
        ``lengths`` (a 1-D integer tensor, best passed by keyword) is an alternative to
        packing for padded input: outputs past each length are zero and ``(h_n, c_n)`` are
        taken at each sequence's last valid step. Returns ``output, (h_n, c_n)`` exactly as
        ``nn.LSTM`` does.

    Deployment (docs/index.md, "Deploying"): under ``torch.jit.script`` the module runs
    ``nn.LSTM``'s code over its own parameters; under ``torch.onnx.export`` it becomes ONNX
    ``LSTM`` nodes (:mod:`fastlstm.onnx`); ``torch.ao.quantization.quantize_dynamic`` with
    ``{fastlstm.LSTM}`` swaps in :class:`fastlstm.quantized.DynamicQuantizedLSTM`.

    Attributes:
        last_backend: the backend that ran the most recent forward call (None before one;
            ``"onnx"`` after a call traced by ``torch.onnx.export``).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
        design: str | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if design is not None and (backend != "triton" or design not in DESIGNS):
            raise ValueError(
                f"design={design!r}: pins a Triton kernel design, one of {', '.join(DESIGNS)}, "
                "and needs backend='triton'"
            )
        super().__init__(
            "LSTM",
            input_size,
            hidden_size,
            num_layers=num_layers,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            bidirectional=bidirectional,
            proj_size=proj_size,
            device=device,
            dtype=dtype,
        )
        self.backend = backend
        self.design = design
        self.last_backend: str | None = None

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        if self.design is not None:
            s += f", design={self.design!r}"
        return s

    # TorchScript compiles one forward per input type, as for nn.LSTM.
    @overload  # type: ignore[override]
    @torch._jit_internal._overload_method
    def forward(
        self,
        input: Tensor,
        hx: tuple[Tensor, Tensor] | None = None,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]: ...

    @overload
    @torch._jit_internal._overload_method
    def forward(
        self,
        input: PackedSequence,
        hx: tuple[Tensor, Tensor] | None = None,
        lengths: Tensor | None = None,
    ) -> tuple[PackedSequence, tuple[Tensor, Tensor]]: ...

    def forward(self, input, hx=None, lengths=None):
        # ``lengths`` is an ordinary parameter, not keyword-only: TorchScript rejects
        # keyword-only parameters with defaults, and the legacy ONNX exporter passes every
        # default positionally. Under torch.jit.script only the first branch is compiled (the
        # other is parsed, never type-checked): the fused aten op nn.LSTM runs, over the same
        # parameters, so a scripted model saves and loads without fastlstm.
        if torch.jit.is_scripting():
            if isinstance(input, PackedSequence):
                if lengths is not None:
                    raise ValueError(
                        "lengths: a PackedSequence already carries its lengths; pass either a "
                        "PackedSequence or a padded tensor with lengths=, not both"
                    )
                return self._script_packed(input, hx)
            elif lengths is None:
                return self._script_padded(input, hx)
            else:
                return self._script_lengths(input, hx, lengths)
        else:
            return self._forward(input, hx, lengths)

    @torch.jit.unused
    def _forward(
        self,
        input: Tensor | PackedSequence,
        hx: tuple[Tensor, Tensor] | None,
        lengths: Tensor | None,
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        """The eager (and torch.compile, export, jit.trace) forward: a backend runs it."""
        # As nn.LSTM does: picks up parameters swapped in by torch.func.functional_call,
        # parametrizations and the like, which _flat_weights would otherwise miss.
        self._update_flat_weights()
        packed = input if isinstance(input, PackedSequence) else None
        batch_first = self.batch_first
        if packed is not None:
            if lengths is not None:
                raise ValueError(
                    "lengths: a PackedSequence already carries its lengths; pass either a "
                    "PackedSequence or a padded tensor with lengths=, not both"
                )
            x, lengths, t_idx, b_idx = packed_to_padded(packed)
            batch_first = False
        elif isinstance(input, Tensor):
            x = input
        else:
            raise TypeError(
                f"input: expected a Tensor or a PackedSequence, got {type(input).__name__}"
            )

        unbatched = packed is None and x.dim() == 2
        if packed is None and x.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {x.dim()}D instead")
        if hx is not None and isinstance(hx, (tuple, list)) and len(hx) == 2:
            want = 2 if unbatched else 3
            dims = tuple(getattr(t, "dim", lambda: -1)() for t in hx)
            if dims != (want, want):
                kind = "unbatched 2-D" if unbatched else "batched 3-D"
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({dims[0]}-D, {dims[1]}-D) tensors"
                )
        if unbatched:
            x = x.unsqueeze(0 if batch_first else 1)
            if hx is not None:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            if lengths is not None:
                raise ValueError("lengths: not supported for unbatched 2-D input")

        options = LSTMOptions(
            self.num_layers,
            self.bidirectional,
            self.dropout,
            self.training,
            batch_first,
            self.backend,
            self.design,
        )
        out, (h_n, c_n), choice = run_lstm(x, hx, self._flat_weights, lengths, options)
        self.last_backend = choice.name

        if packed is not None:
            return padded_to_packed(out, packed, t_idx, b_idx), (h_n, c_n)
        if unbatched:
            out = out.squeeze(0 if batch_first else 1)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return out, (h_n, c_n)

    # TorchScript's forward: nn.LSTM's own code path over this module's parameters, so that a
    # scripted model gives nn.LSTM's results and its saved file needs no fastlstm to load.

    def _script_check(
        self, input: Tensor, hx: tuple[Tensor, Tensor], batch: int, batch_sizes: Tensor | None
    ) -> None:
        self.check_input(input, batch_sizes)
        D = 2 if self.bidirectional else 1
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        h_size = (self.num_layers * D, batch, P)
        c_size = (self.num_layers * D, batch, self.hidden_size)
        self.check_hidden_size(hx[0], h_size, "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(hx[1], c_size, "Expected hidden[1] size {}, got {}")

    def _script_zeros(self, like: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        D = 2 if self.bidirectional else 1
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        h = torch.zeros(self.num_layers * D, batch, P, dtype=like.dtype, device=like.device)
        c = torch.zeros(
            self.num_layers * D, batch, self.hidden_size, dtype=like.dtype, device=like.device
        )
        return h, c

    def _script_padded(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
        batch = input.size(0) if self.batch_first else input.size(1)
        if hx is None:
            state = self._script_zeros(input, batch)
        else:
            want = 3 if batched else 2
            if hx[0].dim() != want or hx[1].dim() != want:
                kind = "batched 3-D" if batched else "unbatched 2-D"
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
            state = hx if batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        self._script_check(input, state, batch, None)
        result = _VF.lstm(
            input,
            state,
            self._flat_weights,
            self.bias,
            self.num_layers,
            self.dropout,
            self.training,
            self.bidirectional,
            self.batch_first,
        )
        out, h_n, c_n = result[0], result[1], result[2]
        if not batched:
            out = out.squeeze(0 if self.batch_first else 1)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return out, (h_n, c_n)

    def _script_packed(
        self, input: PackedSequence, hx: tuple[Tensor, Tensor] | None
    ) -> tuple[PackedSequence, tuple[Tensor, Tensor]]:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        batch = int(batch_sizes[0])
        if hx is None:
            state = self._script_zeros(data, batch)
        else:
            # hx is in the caller's batch order; the packed batch is sorted by length.
            state = hx
            if sorted_indices is not None:
                state = (
                    hx[0].index_select(1, sorted_indices),
                    hx[1].index_select(1, sorted_indices),
                )
            self._script_check(data, state, batch, batch_sizes)
        result = _VF.lstm(
            data,
            batch_sizes,
            state,
            self._flat_weights,
            self.bias,
            self.num_layers,
            self.dropout,
            self.training,
            self.bidirectional,
        )
        h_n, c_n = result[1], result[2]
        if unsorted_indices is not None:
            h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
        return PackedSequence(result[0], batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)

    def _script_lengths(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None, lengths: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        # Packing gives the eager semantics: zeros past each length, h_n at the last valid step.
        if input.dim() != 3:
            raise ValueError("lengths: not supported for unbatched 2-D input")
        T = input.size(1) if self.batch_first else input.size(0)
        packed = pack_padded_sequence(input, lengths.cpu(), self.batch_first, False)
        out, state = self._script_packed(packed, hx)
        padded, _ = pad_packed_sequence(out, self.batch_first, 0.0, T)
        return padded, state


# Whole-model checkpoints (``torch.save(model)``) load under ``torch.load(weights_only=True)``,
# PyTorch's default, without the user adding fastlstm to the allowlist: the class is all the
# pickle names beyond what torch allows already (parameters, tensors, plain containers).
torch.serialization.add_safe_globals([LSTM])
