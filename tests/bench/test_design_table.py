"""benchmarks/design_table.py: a benchmark run becomes the table ``backend="auto"`` reads.

The table must be exactly ``kernels/measured.py``'s format, so every test reads it back
through ``measured.lookup``, the function the dispatcher calls.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fastlstm.bench.env import environment
from fastlstm.bench.report import load_json, write_json
from fastlstm.bench.runner import RunConfig, _row, run_benchmarks
from fastlstm.bench.shapes import parse_shape
from fastlstm.kernels import measured
from fastlstm.runtime import triton_interpreting

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("design_table", ROOT / "benchmarks/design_table.py")
design_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(design_table)

GPU_ENV = {
    "date_utc": "2026-12-06T10:00:00Z",
    "device": "cuda",
    "hardware": "NVIDIA H200",
    "gpu_name": "NVIDIA H200",
    "torch": "2.11.0+cu130",
    "triton": "3.6.0",
    "git_commit": "abc1234",
    "triton_interpret": False,
}
CONFIG = {"command": "fastlstm bench --shapes gpu --device cuda"}


def _timed(text, dtype, provider, ms, mode="fwd+bwd", spread=0.02):
    return _row(parse_shape(text), provider, mode, dtype=dtype, median_ms=ms,
                q1_ms=ms * (1 - spread / 2), q3_ms=ms * (1 + spread / 2))  # fmt: skip


def _results():
    rows = [
        # tf32, B=64 H=256: persistent wins, step loses, batch failed its check.
        _timed("T256-B64-I256-H256", "tf32", "nn.LSTM-padded", 6.0),
        _timed("T256-B64-I256-H256", "tf32", "nn.LSTM-control", 6.0),
        _timed("T256-B64-I256-H256", "tf32", "fastlstm-triton-persistent", 4.0),
        _timed("T256-B64-I256-H256", "tf32", "fastlstm-triton-step", 12.0),
        _row(
            parse_shape("T256-B64-I256-H256"),
            "fastlstm-triton-batch",
            "fwd+bwd",
            dtype="tf32",
            status="check failed",
            detail="output differs",
        ),
        # Forward rows are not what the table is made of.
        _timed("T256-B64-I256-H256", "tf32", "nn.LSTM-padded", 1.0, mode="fwd"),
        _timed("T256-B64-I256-H256", "tf32", "fastlstm-triton-step", 100.0, mode="fwd"),
        # Two T at ieee B=1 H=128: one entry, the geometric mean (2 and 8 -> 4).
        _timed("T128-B1-I128-H128", "float32", "nn.LSTM-padded", 2.0),
        _timed("T128-B1-I128-H128", "float32", "fastlstm-triton-batch", 1.0),
        _timed("T512-B1-I128-H128", "float32", "nn.LSTM-padded", 8.0),
        _timed("T512-B1-I128-H128", "float32", "fastlstm-triton-batch", 1.0),
        # step timed at one T only: no ratio for it there.
        _timed("T128-B1-I128-H128", "float32", "fastlstm-triton-step", 1.0),
        # bf16: nothing but the baseline ran, with widely spread timings.
        _timed("T256-B256-I512-H512", "bfloat16", "nn.LSTM-padded", 9.0, spread=0.5),
        _row(
            parse_shape("T256-B256-I512-H512"),
            "fastlstm-triton-persistent",
            "fwd+bwd",
            dtype="bfloat16",
            status="unavailable",
            detail="too many programs",
        ),
        # Left out: lengths, two layers, bidirectional, float64, no timed baseline.
        _timed("T256-B64-I64-H64-var20", "tf32", "nn.LSTM-padded", 6.0),
        _timed("T256-B64-I64-H64-var20", "tf32", "fastlstm-triton-step", 1.0),
        _timed("T256-B64-I64-H64-L2", "tf32", "nn.LSTM-padded", 6.0),
        _timed("T256-B64-I64-H64-L2", "tf32", "fastlstm-triton-step", 1.0),
        _timed("T256-B64-I64-H64-bidir", "tf32", "nn.LSTM-padded", 6.0),
        _timed("T256-B64-I64-H64-bidir", "tf32", "fastlstm-triton-step", 1.0),
        _timed("T256-B64-I64-H64", "float64", "nn.LSTM-padded", 6.0),
        _timed("T256-B64-I64-H64", "float64", "fastlstm-triton-step", 1.0),
        _timed("T256-B16-I64-H64", "tf32", "fastlstm-triton-step", 1.0),
    ]
    return {"environment": GPU_ENV, "config": CONFIG, "rows": rows}


def test_a_gpu_run_becomes_one_table_in_the_committed_format():
    table, notes = design_table.build_table(_results())
    assert set(table) == set(design_table.TABLE_KEYS)
    assert table["device"] == "NVIDIA H200" and table["triton"] == "3.6.0"
    assert table["date"] == "2026-12-06" and table["commit"] == "abc1234"
    assert table["command"] == CONFIG["command"] and table["torch"] == "2.11.0+cu130"
    assert table["entries"] == [
        {"precision": "tf32", "B": 64, "H": 256, "proj": 0,
         "ratios": {"persistent": 1.5, "step": 0.5}},
        {"precision": "ieee", "B": 1, "H": 128, "proj": 0, "ratios": {"batch": 4.0}},
        {"precision": "bf16", "B": 256, "H": 512, "proj": 0, "ratios": {}},
    ]  # fmt: skip
    assert notes == [
        "unsteady: bf16 B=256 H=512 (a timing's interquartile range is 50% of its median)",
        "control (nn.LSTM against itself, fwd+bwd): 1.00x to 1.00x over 1 shape(s); 1.00x "
        "unless the harness is biased",
    ]
    json.dumps(table)

    tables = (table,)
    ratios, where = measured.lookup("NVIDIA H200", "3.6.1", "tf32", 100, 200, 0, tables)
    assert ratios == {"persistent": 1.5, "step": 0.5}
    assert "measured on NVIDIA H200 (2026-12-06, triton 3.6.0) at B=64 H=256" in where
    # The entry without ratios masks its neighbourhood: nothing wins there.
    assert measured.lookup("NVIDIA H200", "3.6.0", "bf16", 256, 512, 0, tables)[0] == {}
    # Other GPUs, Triton versions, precisions, a projection and far shapes: no entry.
    assert measured.lookup("NVIDIA H100 80GB HBM3", "3.6.0", "tf32", 64, 256, 0, tables) is None
    assert measured.lookup("NVIDIA H200", "3.7.0", "tf32", 64, 256, 0, tables) is None
    assert measured.lookup("NVIDIA H200", "3.6.0", "fp16", 64, 256, 0, tables) is None
    assert measured.lookup("NVIDIA H200", "3.6.0", "tf32", 64, 256, 128, tables) is None
    assert measured.lookup("NVIDIA H200", "3.6.0", "tf32", 16, 256, 0, tables) is None


def test_the_table_prints_as_markdown():
    table, notes = design_table.build_table(_results())
    text = design_table.format_table(table, notes)
    assert "| precision | B | H | persistent | step | batch |" in text
    assert "| tf32 | 64 | 256 | 1.5x | 0.5x | - |" in text
    assert "| bf16 | 256 | 512 | - | - | - |" in text
    assert "- unsteady: bf16 B=256 H=512" in text


def test_merge_replaces_the_same_gpu_and_triton_minor_only(tmp_path):
    path = tmp_path / "measured.json"
    old = {**design_table.build_table(_results())[0], "triton": "3.6.1", "date": "2026-01-01"}
    other_gpu = {**old, "device": "NVIDIA H100 80GB HBM3"}
    other_triton = {**old, "triton": "3.5.0"}
    path.write_text(json.dumps({"format": 1, "tables": [old, other_gpu, other_triton]}))
    new, _ = design_table.build_table(_results())
    content = design_table.merge(new, path)
    assert json.loads(path.read_text()) == content
    assert [(t["device"], t["triton"], t["date"]) for t in content["tables"]] == [
        ("NVIDIA H100 80GB HBM3", "3.6.1", "2026-01-01"),
        ("NVIDIA H200", "3.5.0", "2026-01-01"),
        ("NVIDIA H200", "3.6.0", "2026-12-06"),
    ]
    measured.load_tables.cache_clear()
    try:
        assert len(measured.load_tables(path)) == 3  # the loader accepts the merged file
    finally:
        measured.load_tables.cache_clear()
    fresh = design_table.merge(new, tmp_path / "new.json")
    assert fresh == {"format": 1, "tables": [new]}


def test_merge_refuses_what_is_not_one_gpu_table(tmp_path):
    table, _ = design_table.build_table(_results())
    cpu = {**table, "device": design_table.device_name({**GPU_ENV, "device": "cpu"})}
    with pytest.raises(ValueError, match="not measured on a GPU"):
        design_table.merge(cpu, tmp_path / "m.json")
    with pytest.raises(ValueError, match="not a design table: no entries"):
        design_table.merge({k: v for k, v in table.items() if k != "entries"}, tmp_path / "m.json")
    (tmp_path / "old.json").write_text('{"format": 0, "tables": []}')
    with pytest.raises(ValueError, match="unknown design table format 0"):
        design_table.merge(table, tmp_path / "old.json")


def test_command_line_writes_and_merges(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_results()))
    out, into = tmp_path / "out" / "design_table.json", tmp_path / "measured.json"
    assert design_table.main([str(results), "--out", str(out)]) == 0
    assert "| tf32 | 64 | 256 | 1.5x | 0.5x | - |" in capsys.readouterr().out
    assert json.loads(out.read_text())["device"] == "NVIDIA H200"
    assert design_table.main(["--merge", str(out), "--into", str(into)]) == 0
    assert "1 table(s); NVIDIA H200, triton 3.6.0: 3 entries" in capsys.readouterr().out
    assert design_table.main([str(tmp_path / "missing.json"), "--out", str(out)]) == 1
    assert "design_table: error: FileNotFoundError" in capsys.readouterr().err


@pytest.mark.skipif(not triton_interpreting(), reason="needs TRITON_INTERPRET=1")
def test_a_run_off_the_gpu_gives_a_table_that_applies_to_no_gpu(tmp_path):
    config = RunConfig(warmup=0, repeats=1, min_repeats=1, budget_s=None, memory=False)
    providers = ["nn.LSTM-padded", "fastlstm-triton-persistent", "fastlstm-triton-step",
                 "fastlstm-triton-batch"]  # fmt: skip
    rows = run_benchmarks([parse_shape("T3-B2-I4-H16")], providers, "cpu", ["tf32", "bfloat16"],
                          ["fwd+bwd"], config, progress=False)  # fmt: skip
    env = environment("cpu", "tf32,bfloat16")
    path = write_json(tmp_path / "results.json", env, {"command": "fastlstm bench"}, rows)
    table, _ = design_table.build_table(load_json(path))
    assert table["device"].startswith("not a GPU: cpu (")
    assert table["device"].endswith("under the Triton interpreter")
    assert [(e["precision"], e["B"], e["H"], sorted(e["ratios"])) for e in table["entries"]] == [
        ("tf32", 2, 16, ["batch", "persistent", "step"]),
        ("bf16", 2, 16, []),  # the interpreter runs no bfloat16 kernel
    ]
    gpu_names = ["NVIDIA H200", "NVIDIA H100 80GB HBM3", "Triton interpreter"]
    if torch.cuda.is_available():
        gpu_names.append(torch.cuda.get_device_properties(0).name)
    for name in gpu_names:
        assert measured.lookup(name, env["triton"], "tf32", 2, 16, 0, (table,)) is None
    with pytest.raises(ValueError, match="not measured on a GPU"):
        design_table.merge(table, tmp_path / "measured.json")
