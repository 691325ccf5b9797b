"""Providers: the competing implementations, each built on the same weights and inputs.

A provider turns a :class:`~fastlstm.bench.shapes.Shape` into a :class:`Case`: a zero-argument
forward call plus everything needed to time it forward-only or forward+backward and to check
its results against ``torch.nn.LSTM``. Every case of one shape shares one weight set and one
input batch (built from a seed), so the times compare the implementations and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fastlstm.backends import DESIGNS, select_backend
from fastlstm.bench.shapes import Shape, make_lengths
from fastlstm.sequences import reverse_within_lengths

__all__ = [
    "BASELINE_FIXED",
    "BASELINE_VARIABLE",
    "CONTROL",
    "PROVIDERS",
    "Case",
    "Problem",
    "applies_to",
    "baseline_for",
    "build_case",
    "default_providers",
    "design_of",
    "make_problem",
    "provider_why_not",
    "python_loop_lstm",
]

BASELINE_FIXED = "nn.LSTM-padded"
BASELINE_VARIABLE = "nn.LSTM-packed"
CONTROL = "nn.LSTM-control"

PROVIDERS: dict[str, str] = {
    "fastlstm-auto": "fastlstm.LSTM(backend='auto'), padded input (+ lengths=)",
    "fastlstm-reference": "fastlstm.LSTM(backend='reference'), padded input (+ lengths=)",
    "fastlstm-aten": "fastlstm.LSTM(backend='aten'), padded input (+ lengths=)",
    "fastlstm-triton": "fastlstm.LSTM(backend='triton'), padded input (+ lengths=)",
    # One kernel design pinned (no fallback): what the design table (kernels/measured.json)
    # is measured from. A design that cannot serve a call raises instead of running another.
    **{
        f"fastlstm-triton-{design}": f"fastlstm.LSTM(backend='triton', design='{design}')"
        for design in DESIGNS
    },
    "fastlstm-packed": "fastlstm.LSTM(backend='auto') on the PackedSequence",
    BASELINE_FIXED: "torch.nn.LSTM on the padded batch (ignores lengths)",
    BASELINE_VARIABLE: "torch.nn.LSTM on the PackedSequence",
    CONTROL: "a second copy of the shape's baseline: reads 1.00x unless the harness is biased",
    "python-loop": "per-timestep Python loop, autograd through every step",
}

# Providers that only make sense for variable-length batches.
_VARIABLE_ONLY = ("fastlstm-packed", BASELINE_VARIABLE)

# The size asked about when no shape is given: can the backend run on the device at all?
_PROBE_HIDDEN = 64


def _backend_of(name: str) -> str | None:
    """The fastlstm backend a provider names (``fastlstm-triton-step`` -> ``triton``)."""
    if name == "fastlstm-packed" or not name.startswith("fastlstm-"):
        return None
    return name.removeprefix("fastlstm-").split("-")[0]


def design_of(name: str) -> str | None:
    """The Triton design a provider pins (``fastlstm-triton-step`` -> ``step``), else None."""
    prefix = "fastlstm-triton-"
    return name.removeprefix(prefix) if name.startswith(prefix) else None


def provider_why_not(
    name: str,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    shape: Shape | None = None,
) -> str | None:
    """None when ``name`` can run on ``device`` for ``dtype`` (and ``shape``), else why not.

    For a named fastlstm backend, :func:`fastlstm.backends.select_backend` decides (with the
    shape's batch size and the pinned design, whose own limits depend on both), so the
    benchmark never disagrees with the module about what can run. Without a shape it asks
    whether the provider can run on the device at all (one sequence, hidden size 64). A
    pinned design may still fail at launch; it raises ``RuntimeError`` and the runner
    reports that as unavailable too.
    """
    if name not in PROVIDERS:
        raise ValueError(f"unknown provider {name!r}; expected one of {', '.join(PROVIDERS)}")
    backend = _backend_of(name)
    if backend is not None and backend != "auto":
        hidden = shape.H if shape is not None else _PROBE_HIDDEN
        batch = shape.B if shape is not None else 1
        try:
            select_backend(backend, device, dtype, hidden, batch_size=batch, design=design_of(name))
        except RuntimeError as err:
            return str(err)
    return None


def default_providers(device: torch.device) -> tuple[str, ...]:
    """Every provider that runs on ``device``; Triton only on CUDA (never the interpreter)."""
    return tuple(
        name
        for name in PROVIDERS
        if _backend_of(name) != "triton"
        or (device.type == "cuda" and provider_why_not(name, device) is None)
    )


def baseline_for(shape: Shape) -> str:
    """The nn.LSTM provider that speedups are measured against for ``shape``.

    With variable lengths only the packed call gives nn.LSTM's correct results, so that is
    the honest baseline; the padded call is still timed, as what people often run instead.
    """
    return BASELINE_VARIABLE if shape.variable else BASELINE_FIXED


def applies_to(name: str, shape: Shape) -> bool:
    """Whether provider ``name`` is meaningful for ``shape`` (packed ones need lengths)."""
    return shape.variable or name not in _VARIABLE_ONLY


@dataclass
class Problem:
    """One shape's shared material: nn.LSTM weights, padded input, lengths, cotangents."""

    shape: Shape
    reference: nn.LSTM  # the weights every provider copies
    x: Tensor  # [T, B, I]
    lengths: Tensor | None  # [B] int64 on the CPU
    grad_out: Tensor  # [T, B, D*P], zero past each length
    grad_h: Tensor  # [L*D, B, P]
    grad_c: Tensor  # [L*D, B, H]


def make_problem(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Problem:
    """Build the weights, input batch, lengths and random cotangents for ``shape``."""
    torch.manual_seed(seed)
    ref = nn.LSTM(shape.I, shape.H, num_layers=shape.layers, bidirectional=shape.bidirectional).to(
        device=device, dtype=dtype
    )
    D = 2 if shape.bidirectional else 1
    lengths = make_lengths(shape, seed)
    x = torch.randn(shape.T, shape.B, shape.I, device=device, dtype=dtype)
    grad_out = torch.randn(shape.T, shape.B, D * shape.H, device=device, dtype=dtype)
    if lengths is not None:
        valid = torch.arange(shape.T).unsqueeze(1) < lengths.unsqueeze(0)  # [T, B]
        valid = valid.to(device).unsqueeze(-1)
        x = x * valid
        grad_out = grad_out * valid
    grad_h = torch.randn(shape.layers * D, shape.B, shape.H, device=device, dtype=dtype)
    grad_c = torch.randn(shape.layers * D, shape.B, shape.H, device=device, dtype=dtype)
    return Problem(shape, ref, x, lengths, grad_out, grad_h, grad_c)


@dataclass
class Case:
    """A ready-to-time provider on one problem.

    ``call()`` runs one forward and returns the provider's raw ``(output, h_n, c_n)``;
    ``padded(output)`` turns that output into ``[T, B, D*P]`` for comparisons;
    ``leaves`` are the tensors whose gradients the benchmark asks for (input, then weights);
    ``input_grad()`` returns the input's gradient as ``[T, B, I]`` after a backward.
    Everything a provider is (backend, pinned design) lives in its module: nothing global
    is changed around a call.
    """

    provider: str
    call: Callable[[], tuple[Tensor | PackedSequence, Tensor, Tensor]]
    padded: Callable[[Tensor | PackedSequence], Tensor]
    leaves: list[Tensor]
    grad_out: Tensor | PackedSequence
    grad_h: Tensor
    grad_c: Tensor
    input_grad: Callable[[], Tensor | None]
    module: nn.Module | None = None

    def forward(self) -> None:
        """One forward pass without building an autograd graph."""
        with torch.no_grad():
            self.call()

    def forward_backward(self) -> tuple[Tensor | PackedSequence, Tensor, Tensor]:
        """One forward and backward pass with fixed random cotangents; returns the forward's
        ``(output, h_n, c_n)``, with the gradients left on :attr:`leaves`."""
        for leaf in self.leaves:
            leaf.grad = None
        out, h_n, c_n = self.call()
        out_t = out.data if isinstance(out, PackedSequence) else out
        g_out = self.grad_out
        g_out = g_out.data if isinstance(g_out, PackedSequence) else g_out
        torch.autograd.backward([out_t, h_n, c_n], [g_out, self.grad_h, self.grad_c])
        return out, h_n, c_n

    @property
    def backend_ran(self) -> str | None:
        """The fastlstm backend that ran the last call (None for non-fastlstm providers)."""
        return getattr(self.module, "last_backend", None)


def _clone_module(problem: Problem, module: nn.LSTM) -> nn.LSTM:
    module.load_state_dict(problem.reference.state_dict())
    return module.to(device=problem.x.device, dtype=problem.x.dtype)


def _packed(problem: Problem, x: Tensor) -> PackedSequence:
    assert problem.lengths is not None
    return pack_padded_sequence(x, problem.lengths, enforce_sorted=False)


def build_case(name: str, problem: Problem) -> Case:
    """Build provider ``name`` on ``problem``; raises ``ValueError`` if it does not apply."""
    shape = problem.shape
    if not applies_to(name, shape):
        raise ValueError(f"provider {name!r} needs a variable-length shape, got {shape.id}")
    if name == CONTROL:
        case = build_case(baseline_for(shape), problem)
        case.provider = CONTROL
        return case
    lengths = problem.lengths
    device = problem.x.device

    def unpack(out: Tensor | PackedSequence) -> Tensor:
        if isinstance(out, PackedSequence):
            return pad_packed_sequence(out, total_length=shape.T)[0]
        return out

    if name in (BASELINE_VARIABLE, "fastlstm-packed"):
        if name == BASELINE_VARIABLE:
            module = _clone_module(
                problem, nn.LSTM(shape.I, shape.H, shape.layers, bidirectional=shape.bidirectional)
            )
        else:
            from fastlstm import LSTM

            module = _clone_module(
                problem, LSTM(shape.I, shape.H, shape.layers, bidirectional=shape.bidirectional)
            )
        packed_x = _packed(problem, problem.x)
        data = packed_x.data.detach().requires_grad_()
        packed_in = PackedSequence(
            data, packed_x.batch_sizes, packed_x.sorted_indices, packed_x.unsorted_indices
        )

        def input_grad() -> Tensor | None:
            if data.grad is None:
                return None
            return unpack(packed_in._replace(data=data.grad))

        return Case(
            name,
            lambda: _flatten(module(packed_in)),
            unpack,
            [data, *module.parameters()],
            _packed(problem, problem.grad_out),
            problem.grad_h,
            problem.grad_c,
            input_grad,
            module,
        )

    x = problem.x.detach().clone().requires_grad_()
    if name == BASELINE_FIXED:
        module = _clone_module(
            problem, nn.LSTM(shape.I, shape.H, shape.layers, bidirectional=shape.bidirectional)
        )
        call = lambda: _flatten(module(x))  # noqa: E731
    elif name.startswith("fastlstm-"):
        from fastlstm import LSTM

        module = _clone_module(
            problem,
            LSTM(
                shape.I,
                shape.H,
                shape.layers,
                bidirectional=shape.bidirectional,
                backend=_backend_of(name),
                design=design_of(name),
            ),
        )
        lens = None if lengths is None else lengths.to(device)
        call = lambda: _flatten(module(x, lengths=lens))  # noqa: E731
    elif name == "python-loop":
        module = None
        weights = [w.detach().clone().requires_grad_() for w in problem.reference._flat_weights]
        lens = None if lengths is None else lengths.to(device)
        call = lambda: python_loop_lstm(  # noqa: E731
            x, weights, shape.layers, shape.bidirectional, lens
        )
    else:
        raise ValueError(f"unknown provider {name!r}; expected one of {', '.join(PROVIDERS)}")
    leaves = [x, *(module.parameters() if module is not None else weights)]
    return Case(
        name,
        call,
        unpack,
        leaves,
        problem.grad_out,
        problem.grad_h,
        problem.grad_c,
        lambda: x.grad,
        module,
    )


def _flatten(result: tuple) -> tuple[Tensor | PackedSequence, Tensor, Tensor]:
    out, (h_n, c_n) = result
    return out, h_n, c_n


def python_loop_lstm(
    x: Tensor,
    flat_weights: list[Tensor],
    num_layers: int,
    bidirectional: bool,
    lengths: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The straightforward LSTM a user writes by hand: one Python iteration per time step.

    Each step computes both matmuls (``x_t W_ih^T + b_ih + h W_hh^T + b_hh``), the gates, and
    the new state, and autograd records every step; nothing is hoisted or fused. Sequences
    shorter than T keep their state frozen (masked update) and output zeros past their
    length; the reverse direction walks each sequence back from its own last step. Weights
    are in ``nn.LSTM._flat_weights`` order with biases. Returns ``out [T, B, D*H]``,
    ``h_n, c_n [L*D, B, H]``.
    """
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = flat_weights[1].shape[1]
    valid = None
    if lengths is not None:
        valid = torch.arange(T, device=x.device).unsqueeze(1) < lengths.unsqueeze(0)  # [T, B]
        valid = valid.unsqueeze(-1)  # [T, B, 1]
    h_ns, c_ns = [], []
    layer_in = x
    for layer in range(num_layers):
        outs = []
        for direction in range(D):
            w_ih, w_hh, b_ih, b_hh = flat_weights[4 * (layer * D + direction) :][:4]
            seq = layer_in
            if direction == 1:
                seq = reverse_within_lengths(seq, lengths)
            h = x.new_zeros(B, H)
            c = x.new_zeros(B, H)
            steps = []
            for t in range(T):
                gates = seq[t] @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh  # [B, 4H]
                i, f, g, o = gates.chunk(4, dim=1)
                c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h_new = torch.sigmoid(o) * torch.tanh(c_new)
                if valid is not None:
                    c = torch.where(valid[t], c_new, c)
                    h = torch.where(valid[t], h_new, h)
                    steps.append(h_new * valid[t])
                else:
                    c, h = c_new, h_new
                    steps.append(h_new)
            out = torch.stack(steps)  # [T, B, H]
            if direction == 1:
                out = reverse_within_lengths(out, lengths)
            outs.append(out)
            h_ns.append(h)
            c_ns.append(c)
        layer_in = torch.cat(outs, dim=-1) if D == 2 else outs[0]
    return layer_in, torch.stack(h_ns), torch.stack(c_ns)
