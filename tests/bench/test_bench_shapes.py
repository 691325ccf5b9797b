"""Shape texts, presets and grids of the benchmark suite."""

from __future__ import annotations

import pytest

from fastlstm.bench.shapes import GRIDS, PRESETS, Shape, make_lengths, parse_shape, parse_shapes


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("T100-B64-I512-H512", Shape(100, 64, 512, 512), id="plain"),
        pytest.param("t7-b3-i5-h20", Shape(7, 3, 5, 20), id="lower-case"),
        pytest.param(
            "T7-B3-I5-H20-L2-bidir-var2",
            Shape(7, 3, 5, 20, layers=2, bidirectional=True, min_len=2),
            id="all-options",
        ),
        pytest.param("H20-var3-B3-T7-I5", Shape(7, 3, 5, 20, min_len=3), id="any-order"),
    ],
)
def test_parse_shape(text: str, expected: Shape):
    assert parse_shape(text) == expected


@pytest.mark.parametrize("shape", [*PRESETS.values(), *GRIDS["quick"]], ids=lambda s: s.id)
def test_id_round_trips(shape: Shape):
    assert parse_shape(shape.id) == shape


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param("T5-B2", "missing I, H", id="missing"),
        pytest.param("T5-B2-I3-H4-x9", "cannot read 'x9'", id="unknown-part"),
        pytest.param("T5-T6-B2-I3-H4", "'T6' repeats a field", id="repeat"),
        pytest.param("T5-B2-I3-H4-var9", "between 1 and T=5", id="var-too-long"),
        pytest.param("T0-B2-I3-H4", "positive integer", id="zero"),
    ],
)
def test_parse_shape_errors(text: str, message: str):
    with pytest.raises(ValueError, match=message):
        parse_shape(text)


def test_parse_shapes_expands_names_and_drops_duplicates():
    shapes = parse_shapes("quick, pytorch, T100-B64-I512-H512, T3-B2-I2-H2")
    assert shapes[: len(GRIDS["quick"])] == GRIDS["quick"]
    assert shapes[len(GRIDS["quick"]) :] == (PRESETS["pytorch"], Shape(3, 2, 2, 2))


def test_parse_shapes_errors_list_the_names():
    with pytest.raises(ValueError, match="or one of the names: quick, full"):
        parse_shapes("quick,nonsense")
    with pytest.raises(ValueError, match="empty list"):
        parse_shapes(" , ")


def test_grids_cover_the_issue_families():
    full = GRIDS["full"]
    assert PRESETS["pytorch"] == Shape(100, 64, 512, 512)
    assert PRESETS["pytorch"] in full
    assert any(s.B == 1 for s in full) and any(s.B == 8 for s in full)
    assert any(s.T >= 1024 for s in full)
    assert any(s.variable for s in full)
    packed = {(s.B, s.H) for s in GRIDS["packed"]}
    assert packed == {(32, 30), (64, 30), (32, 128), (64, 128)}
    assert all(s.T == 400 and s.min_len == 20 for s in GRIDS["packed"])


def test_make_lengths_is_seeded_and_spans_the_padded_extent():
    shape = Shape(50, 16, 4, 4, min_len=5)
    a, b = make_lengths(shape, seed=3), make_lengths(shape, seed=3)
    assert a is not None and b is not None
    assert a.equal(b)
    assert int(a.max()) == 50 and int(a.min()) >= 5
    assert make_lengths(Shape(5, 2, 3, 4)) is None
