"""Table, headline ratios, JSON, CSV and chart from benchmark rows."""

from __future__ import annotations

import csv
import json

import pytest

from fastlstm.bench.env import environment
from fastlstm.bench.report import (
    CSV_FIELDS,
    UNSTEADY_SPREAD,
    format_headline,
    format_markdown,
    format_table,
    headline_ratios,
    load_json,
    plot_speedup,
    unsteady,
    write_csv,
    write_json,
)
from fastlstm.bench.runner import _row
from fastlstm.bench.shapes import parse_shape

FIXED = parse_shape("T5-B2-I3-H4")
VAR = parse_shape("T5-B2-I3-H4-var2")


def _rows():
    def ok(shape, provider, mode, ms, speedup, backend=None):
        return _row(
            shape,
            provider,
            mode,
            median_ms=ms,
            q1_ms=0.95 * ms,
            q3_ms=1.05 * ms,
            us_per_step=ms * 1e3 / shape.T,
            speedup=speedup,
            backend=backend,
            peak_mem_bytes=3 * 2**20 if mode == "fwd+bwd" else None,
        )

    return [
        ok(FIXED, "fastlstm-auto", "fwd", 1.0, 2.0, "aten"),
        ok(FIXED, "fastlstm-auto", "fwd+bwd", 2.0, 2.0, "aten"),
        ok(FIXED, "nn.LSTM-padded", "fwd", 2.0, 1.0),
        ok(FIXED, "nn.LSTM-padded", "fwd+bwd", 4.0, 1.0),
        ok(FIXED, "fastlstm-reference", "fwd", 4.0, 0.5, "reference"),
        ok(FIXED, "fastlstm-reference", "fwd+bwd", 8.0, 0.5, "reference"),
        ok(FIXED, "python-loop", "fwd", 8.0, 0.25),
        ok(FIXED, "python-loop", "fwd+bwd", 24.0, 1 / 6),
        ok(VAR, "fastlstm-packed", "fwd+bwd", 1.0, 5.0, "aten"),
        ok(VAR, "nn.LSTM-packed", "fwd+bwd", 5.0, 1.0),
        _row(VAR, "fastlstm-reference", "fwd+bwd", status="check failed", detail="output differs"),
    ]


def test_table_lists_times_speedups_memory_and_failures():
    table = format_table(_rows())
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["shape", "provider", "backend", "fwd"]
    auto = next(line for line in lines if "fastlstm-auto" in line)
    assert "2.00x" in auto and "3.0" in auto and "aten" in auto
    assert "baseline" in next(line for line in lines if "nn.LSTM-padded" in line)
    failed = next(line for line in lines if VAR.id in line and "fastlstm-reference" in line)
    assert "check failed: output differs" in failed and "x" not in failed.split()[3:5]


def test_headline_ratios_are_the_issue_comparisons():
    found = headline_ratios(_rows())
    ratios = {(r["comparison"], r["shape"], r["mode"]): r["ratio"] for r in found}
    assert ratios[("auto vs nn.LSTM (padded)", FIXED.id, "fwd")] == 2.0
    assert ratios[("reference vs python loop", FIXED.id, "fwd+bwd")] == 3.0
    assert ratios[("fastlstm vs nn.LSTM, same PackedSequence", VAR.id, "fwd+bwd")] == 5.0
    assert not any(k[1] == VAR.id and k[0].startswith("reference") for k in ratios)
    assert "3.00x" in format_headline(headline_ratios(_rows()))
    assert format_headline([]) == ""


def test_json_and_csv_round_trip(tmp_path):
    env = {"date_utc": "2026-11-28T00:00:00Z", "machine": "cpu-x-2c", "device": "cpu"}
    path = write_json(tmp_path / "r" / "results.json", env, {"shapes": [FIXED.id]}, _rows())
    data = load_json(path)
    assert data["environment"] == env and len(data["rows"]) == len(_rows())
    assert data["headline"] and json.dumps(data)
    csv_path = write_csv(tmp_path / "results.csv", _rows(), env)
    with csv_path.open() as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == len(_rows())
    assert set(CSV_FIELDS) <= set(records[0])
    assert records[0]["machine"] == "cpu-x-2c" and records[0]["speedup"] == "2"


def test_chart_is_a_png(tmp_path):
    path = plot_speedup(tmp_path / "chart.png", _rows(), {"hardware": "test", "device": "cpu"})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_names_machine_command_and_figures(tmp_path):
    env = {**environment("cpu", "float32"), "hardware": "AMD EPYC", "date_utc": "2026-11-28"}
    config = {"command": "fastlstm bench --shapes quick", "repeats": 10, "warmup": 1,
              "settle": 1, "settle_s": 0.005}  # fmt: skip
    text = format_markdown(load_json(write_json(tmp_path / "r.json", env, config, _rows())))
    assert "AMD EPYC" in text and "`fastlstm bench --shapes quick`" in text
    assert "after 1 warmup, each after 5 ms (at least 1 call) of untimed calls." in text
    # ms, µs per time step (T=5), speedup for each mode, then peak memory
    row = "| fastlstm-auto | aten | 1 | 200 | 2.00x | 2 | 400 | 2.00x | 3.0 |  |"
    assert f"| {FIXED.id} {row}" in text
    assert "| reference vs python loop | T5-B2-I3-H4 | fwd+bwd | 3.00× | 1600 |" in text
    assert "| dtype |" not in text  # one precision: no dtype column


def test_widely_spread_timings_mark_a_ratio_unsteady():
    def timed(provider, median, q1, q3):
        return _row(FIXED, provider, "fwd", median_ms=median, q1_ms=q1, q3_ms=q3)

    steady = [timed("fastlstm-auto", 5.0, 4.9, 5.1), timed("nn.LSTM-padded", 5.0, 4.8, 5.2)]
    # Two-mode timings (5 or 10 ms) as a descheduled second thread gives: spread 90 %.
    shaky = [timed("fastlstm-auto", 5.2, 5.0, 9.5), timed("nn.LSTM-padded", 5.0, 4.8, 5.2)]
    (calm,) = headline_ratios(steady)
    (wild,) = headline_ratios(shaky)
    assert calm["spread"] == pytest.approx(0.08) and not unsteady(calm)
    assert wild["spread"] == pytest.approx(4.5 / 5.2) and unsteady(wild)
    assert "unsteady" not in format_headline([calm])
    assert "unsteady (spread 87%)" in format_headline([wild])
    assert calm["spread"] < UNSTEADY_SPREAD < wild["spread"]


def test_each_pinned_design_gets_a_headline_ratio_against_cudnn():
    def timed(shape, provider, ms):
        return _row(shape, provider, "fwd+bwd", median_ms=ms, q1_ms=ms, q3_ms=ms, us_per_step=1.0)

    rows = [
        timed(FIXED, "nn.LSTM-padded", 6.0),
        timed(FIXED, "fastlstm-triton-persistent", 2.0),
        timed(FIXED, "fastlstm-triton-batch", 12.0),
        timed(VAR, "nn.LSTM-packed", 8.0),
        timed(VAR, "fastlstm-triton-step", 4.0),
    ]
    found = {(r["comparison"], r["shape"]): r["ratio"] for r in headline_ratios(rows)}
    assert found == {
        ("triton persistent vs nn.LSTM (padded)", FIXED.id): 3.0,
        ("triton batch vs nn.LSTM (padded)", FIXED.id): 0.5,
        ("triton step+lengths vs nn.LSTM packed", VAR.id): 2.0,
    }
