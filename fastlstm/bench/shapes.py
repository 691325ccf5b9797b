"""Benchmark shapes: one dataclass, a compact text form, and the named presets and grids.

A shape is written ``T100-B64-I512-H512`` with optional suffixes ``-L2`` (layers), ``-bidir``
and ``-var20`` (lengths drawn uniformly from ``20..T``, seeded, so every provider and every run
sees the same batch). The same text is the shape's id in tables, JSON, CSV and pytest ids.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "GRIDS",
    "PRESETS",
    "Shape",
    "make_lengths",
    "parse_shape",
    "parse_shapes",
]


@dataclass(frozen=True)
class Shape:
    """One benchmark problem: sequence length, batch, input and hidden size, and options.

    ``min_len`` is None for full-length batches; otherwise lengths are uniform in
    ``[min_len, T]`` and the longest sequence is pinned to ``T`` so the padded extent is T.
    """

    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    min_len: int | None = None

    def __post_init__(self) -> None:
        for name in ("T", "B", "I", "H", "layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"shape {name}: expected a positive integer, got {value!r}")
        if self.min_len is not None and not 1 <= self.min_len <= self.T:
            raise ValueError(
                f"shape var{self.min_len}: the shortest length must be between 1 and T={self.T}"
            )

    @property
    def variable(self) -> bool:
        """True when the batch has variable lengths (nn.LSTM needs packing to be correct)."""
        return self.min_len is not None

    @property
    def id(self) -> str:
        """The compact text form, e.g. ``T400-B64-I128-H128-var20``; parses back to self."""
        parts = [f"T{self.T}", f"B{self.B}", f"I{self.I}", f"H{self.H}"]
        if self.layers != 1:
            parts.append(f"L{self.layers}")
        if self.bidirectional:
            parts.append("bidir")
        if self.min_len is not None:
            parts.append(f"var{self.min_len}")
        return "-".join(parts)

    def as_dict(self) -> dict[str, object]:
        """Plain fields plus the id, for JSON and CSV rows."""
        return {"shape": self.id, **asdict(self)}


_TOKEN = re.compile(r"^(t|b|i|h|l|var)(\d+)$")
_FIELD = {"t": "T", "b": "B", "i": "I", "h": "H", "l": "layers", "var": "min_len"}


def parse_shape(text: str) -> Shape:
    """Parse ``T100-B64-I512-H512[-L2][-bidir][-var20]`` (order free, case-insensitive).

    Raises ``ValueError`` naming the bad part and the expected form.
    """
    form = "T<len>-B<batch>-I<input>-H<hidden>[-L<layers>][-bidir][-var<min length>]"
    fields: dict[str, object] = {}
    for part in text.strip().split("-"):
        token = part.strip().lower()
        if token == "bidir":
            fields["bidirectional"] = True
            continue
        match = _TOKEN.match(token)
        if match is None:
            raise ValueError(f"shape {text!r}: cannot read {part!r}; expected {form}")
        key = _FIELD[match.group(1)]
        if key in fields:
            raise ValueError(f"shape {text!r}: {part!r} repeats a field; expected {form}")
        fields[key] = int(match.group(2))
    missing = [k for k in ("T", "B", "I", "H") if k not in fields]
    if missing:
        raise ValueError(f"shape {text!r}: missing {', '.join(missing)}; expected {form}")
    return Shape(**fields)  # type: ignore[arg-type]


# Named single shapes. "pytorch" is the default of PyTorch's own RNN benchmark
# (benchmarks/fastrnns: seqLength=100, miniBatch=64, inputSize=512, hiddenSize=512);
# "classifier" is the IMDB classifier's LSTM (fastlstm.models "default" preset: 64-d
# embeddings, 64 hidden units, bidirectional) and "classifier-exercise" the small "exercise"
# preset (40-d embeddings, 30 hidden), both on reviews of 20..400 tokens; "packed-*" are the
# PackedSequence targets of the drop-in issue.
PRESETS: dict[str, Shape] = {
    "pytorch": Shape(T=100, B=64, I=512, H=512),
    "classifier": Shape(T=400, B=64, I=64, H=64, bidirectional=True, min_len=20),
    "classifier-exercise": Shape(T=400, B=32, I=40, H=30, min_len=20),
    "packed-B32-H30": Shape(T=400, B=32, I=30, H=30, min_len=20),
    "packed-B64-H30": Shape(T=400, B=64, I=30, H=30, min_len=20),
    "packed-B32-H128": Shape(T=400, B=32, I=128, H=128, min_len=20),
    "packed-B64-H128": Shape(T=400, B=64, I=128, H=128, min_len=20),
    "latency-B1": Shape(T=100, B=1, I=128, H=128),
    "latency-B8": Shape(T=100, B=8, I=128, H=128),
    "long": Shape(T=1024, B=16, I=128, H=128),
}

# Grids: "quick" is `fastlstm bench`'s default and must finish in about a minute on a shared
# 2-core CPU with every CPU provider, so its shapes are scaled down versions of the full grid's
# families (big GEMM-bound, classifier with variable lengths, small-batch latency, long).
GRIDS: dict[str, tuple[Shape, ...]] = {
    "quick": (
        Shape(T=50, B=32, I=256, H=256),
        Shape(T=200, B=32, I=64, H=64, min_len=20),
        Shape(T=100, B=1, I=64, H=64),
        Shape(T=200, B=8, I=32, H=32, layers=2, bidirectional=True, min_len=10),
    ),
    "full": (
        PRESETS["pytorch"],
        PRESETS["classifier"],
        PRESETS["classifier-exercise"],
        Shape(T=400, B=64, I=128, H=128, layers=2, bidirectional=True, min_len=20),
        PRESETS["packed-B32-H30"],
        PRESETS["packed-B64-H30"],
        PRESETS["packed-B32-H128"],
        PRESETS["packed-B64-H128"],
        PRESETS["latency-B1"],
        Shape(T=100, B=4, I=128, H=128),
        PRESETS["latency-B8"],
        PRESETS["long"],
        Shape(T=2048, B=8, I=64, H=64, min_len=256),
    ),
    "packed": tuple(PRESETS[k] for k in PRESETS if k.startswith("packed-")),
    # The GPU check's kernel benchmark (benchmarks/gpu_check.sh), which the design table
    # (benchmarks/design_table.py -> kernels/measured.json) is made from: one layer, one
    # direction, full length (the table has no lengths), T = 256, I = H, over the batches
    # and hidden sizes a lookup covers within a factor of 2 (kernels/measured.py). The core
    # (B 64, 256, 1 x H 128, 256, 512) first, then B = 1024 and H = 64.
    "gpu": tuple(
        Shape(T=256, B=B, I=H, H=H)
        for B, H in (
            *((B, H) for B in (64, 256, 1) for H in (128, 256, 512)),
            *((1024, H) for H in (128, 256, 512)),
            *((B, 64) for B in (1, 64, 256, 1024)),
        )
    ),
    # The same kind of grid, tiny, for the GPU check's dry run on Triton's CPU interpreter:
    # two (B, H) points, so the dry run's design table has two entries per precision.
    "gpu-dry": (
        Shape(T=4, B=2, I=16, H=16),
        Shape(T=4, B=3, I=16, H=16),
    ),
}


def parse_shapes(spec: str) -> tuple[Shape, ...]:
    """Parse a comma-separated list of grid names, preset names and shape texts.

    Grid names (``quick``, ``full``, ``packed``, ``gpu``, ``gpu-dry``) expand to their
    grids; ``pytorch``, ``classifier`` etc. to one preset; anything else must be a shape
    text. Duplicates are dropped, order kept.
    """
    shapes: list[Shape] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in GRIDS:
            shapes.extend(GRIDS[item])
        elif item in PRESETS:
            shapes.append(PRESETS[item])
        else:
            try:
                shapes.append(parse_shape(item))
            except ValueError as err:
                names = ", ".join([*GRIDS, *PRESETS])
                raise ValueError(f"{err} (or one of the names: {names})") from None
    if not shapes:
        raise ValueError(f"shapes: got an empty list {spec!r}; expected names or shape texts")
    return tuple(dict.fromkeys(shapes))


def make_lengths(shape: Shape, seed: int = 0) -> torch.Tensor | None:
    """The batch's sequence lengths (int64, CPU), or None when every sequence has length T.

    Seeded so every provider and every run sees the same batch; the first sequence always
    has length T so the padded extent is exactly T.
    """
    if shape.min_len is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(shape.min_len, shape.T + 1, (shape.B,), generator=gen)
    lengths[0] = shape.T
    return lengths
