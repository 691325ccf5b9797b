"""Precompiling: every Triton provider of a grid runs once in worker processes first."""

from __future__ import annotations

import pytest

from fastlstm.bench.precompile import precompile, precompiled_providers, short_shape
from fastlstm.bench.runner import PRECISIONS
from fastlstm.bench.shapes import parse_shape
from fastlstm.runtime import triton_interpreting


@pytest.mark.parametrize(
    "text, short",
    [
        ("T256-B64-I128-H128", "T16-B64-I128-H128"),  # 16 divides both
        ("T100-B1-I64-H64", "T20-B1-I64-H64"),  # 100 % 16 == 20 % 16
        ("T400-B32-I40-H30-var20", "T16-B32-I40-H30-var16"),
        ("T32-B3-I4-H5", "T32-B3-I4-H5"),
        ("T1-B3-I4-H5", "T1-B3-I4-H5"),
    ],
)
def test_short_shape_keeps_everything_triton_specializes_on(text, short):
    shape, got = parse_shape(text), short_shape(parse_shape(text))
    assert got.id == short
    assert (got.T % 16 == 0, got.T == 1) == (shape.T % 16 == 0, shape.T == 1)
    assert (got.B, got.I, got.H, got.layers, got.bidirectional) == (
        shape.B, shape.I, shape.H, shape.layers, shape.bidirectional
    )  # fmt: skip


def test_only_triton_providers_are_precompiled():
    names = ["nn.LSTM-padded", "fastlstm-auto", "fastlstm-triton", "fastlstm-triton-step"]
    assert precompiled_providers(names) == ["fastlstm-triton", "fastlstm-triton-step"]
    report = precompile([parse_shape("T4-B2-I3-H4")], ["nn.LSTM-padded"], "cpu",
                        [PRECISIONS["float32"]], workers=4)  # fmt: skip
    assert (report.ran, report.unavailable, report.failed) == (0, 0, ())


@pytest.mark.skipif(not triton_interpreting(), reason="needs TRITON_INTERPRET=1")
def test_workers_run_each_precision_shape_and_provider():
    report = precompile(
        [parse_shape("T5-B2-I3-H16")],
        ["nn.LSTM-padded", "fastlstm-triton-step", "fastlstm-triton"],
        "cpu",
        [PRECISIONS["tf32"], PRECISIONS["bfloat16"]],
        workers=2,
    )
    # bfloat16: the interpreter cannot run it, so nothing to compile there.
    assert (report.ran, report.unavailable, report.failed) == (2, 2, ())
    assert report.describe().startswith("precompiled the Triton kernels: 2 (precision, shape, ")
