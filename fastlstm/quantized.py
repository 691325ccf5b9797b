"""Dynamic quantization of :class:`fastlstm.LSTM`, as ``nn.LSTM`` is quantized.

``torch.ao.quantization.quantize_dynamic`` swaps each module whose exact type has an entry in
its default dynamic mapping. ``import fastlstm`` adds ``fastlstm.LSTM ->``
:class:`DynamicQuantizedLSTM` to that mapping, so that

    quantize_dynamic(model, {fastlstm.LSTM, nn.Linear}, dtype=torch.qint8)

quantizes the LSTM exactly as it quantizes an ``nn.LSTM`` of the same weights: int8 (or fp16)
weights, torch's dynamic quantized LSTM kernels, the same results. The swapped-in module also
takes fastlstm's ``lengths=`` (by packing), so a model that calls its LSTM with lengths keeps
working.

The type sets are matched exactly (``type(m) in spec``): ``fastlstm.LSTM`` is no
``nn.LSTM`` subclass, so a spec that names only ``nn.LSTM`` (such as ``quantize_dynamic``'s
default) leaves it in fp32. Name ``fastlstm.LSTM`` in the set.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import quantization_mappings
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fastlstm.functional import check_lengths
from fastlstm.module import LSTM

__all__ = ["DynamicQuantizedLSTM", "as_nn_lstm"]


def as_nn_lstm(lstm: LSTM) -> nn.LSTM:
    """An ``nn.LSTM`` over the parameters of ``lstm`` (the same tensors, not copies).

    For tools that accept only ``nn.LSTM`` itself. Parametrized weights (weight norm and the
    like) are handed over as their current values.
    """
    kwargs = {
        "num_layers": lstm.num_layers,
        "bias": lstm.bias,
        "batch_first": lstm.batch_first,
        "dropout": lstm.dropout,
        "bidirectional": lstm.bidirectional,
        "proj_size": lstm.proj_size,
    }
    # Built on the meta device: its own parameters are never allocated, only replaced.
    twin = nn.LSTM(lstm.input_size, lstm.hidden_size, device="meta", **kwargs)
    for name in twin._flat_weights_names:
        value = getattr(lstm, name)
        twin._parameters[name] = (
            value if isinstance(value, nn.Parameter) else nn.Parameter(value.detach(), False)
        )
    twin._init_flat_weights()
    twin.train(lstm.training)
    return twin


class DynamicQuantizedLSTM(nnqd.LSTM):
    """torch's dynamic quantized LSTM, built from a :class:`fastlstm.LSTM`, also taking
    ``lengths=``.

    ``forward(input, hx=None, lengths=None)`` returns what the quantized ``nn.LSTM`` of the
    same weights returns; with ``lengths`` (padded input), what it returns for the packed
    sequence, padded back to ``T`` (fastlstm's semantics: zeros past each length, ``h_n`` at
    the last valid step).
    """

    _FLOAT_MODULE = LSTM  # type: ignore[assignment]

    def _get_name(self) -> str:
        return "DynamicQuantizedLSTM"

    def forward(  # type: ignore[override]
        self,
        input: Tensor | PackedSequence,
        hx: tuple[Tensor, Tensor] | None = None,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        if lengths is None:
            return super().forward(input, hx)
        if isinstance(input, PackedSequence):
            raise ValueError(
                "lengths: a PackedSequence already carries its lengths; pass either a "
                "PackedSequence or a padded tensor with lengths=, not both"
            )
        if input.dim() != 3:
            raise ValueError("lengths: not supported for unbatched 2-D input")
        T, B = input.shape[:2] if not self.batch_first else input.shape[1::-1]
        lengths, _ = check_lengths(lengths, B, T, torch.device("cpu"))  # fastlstm's own checks
        packed = pack_padded_sequence(
            input, lengths, batch_first=self.batch_first, enforce_sorted=False
        )
        out, state = super().forward(packed, hx)
        padded, _ = pad_packed_sequence(out, batch_first=self.batch_first, total_length=T)
        return padded, state

    @classmethod
    def from_float(
        cls, mod: nn.Module, use_precomputed_fake_quant: bool = False
    ) -> DynamicQuantizedLSTM:
        """Quantize ``mod`` (a :class:`fastlstm.LSTM` or an ``nn.LSTM`` with a ``qconfig``)."""
        if type(mod) not in (LSTM, nn.LSTM):
            raise TypeError(
                f"DynamicQuantizedLSTM.from_float: expected fastlstm.LSTM or nn.LSTM, got "
                f"{type(mod).__name__}"
            )
        if mod.proj_size > 0:
            raise ValueError(
                "dynamic quantization of an LSTM with proj_size > 0 is not supported: torch's "
                "dynamic quantized LSTM has no projection"
            )
        if not mod.bias:
            raise ValueError(
                "dynamic quantization of an LSTM with bias=False is not supported: torch's "
                "dynamic quantized LSTM needs the biases"
            )
        float_lstm = as_nn_lstm(mod) if isinstance(mod, LSTM) else mod
        float_lstm.qconfig = getattr(mod, "qconfig", None)
        quantized = nnqd.LSTM.from_float(
            float_lstm, use_precomputed_fake_quant=use_precomputed_fake_quant
        )
        # The same module, of this class: it only adds lengths= to forward.
        quantized.__class__ = cls
        return quantized


# quantize_dynamic(model, {fastlstm.LSTM, ...}) looks the module's type up in this mapping;
# without an entry it would leave the module in fp32 silently.
quantization_mappings.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS[LSTM] = DynamicQuantizedLSTM
