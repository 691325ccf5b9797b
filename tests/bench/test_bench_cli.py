"""``fastlstm bench`` end to end in a subprocess on a tiny grid, and its option errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fastlstm.cli import main

TINY = "T6-B2-I3-H4,T7-B3-I3-H4-var2"


def _bench(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fastlstm", "bench", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def test_bench_end_to_end_writes_json_csv_png(tmp_path):
    out = tmp_path / "bench"
    proc = _bench(
        "--shapes",
        TINY,
        "--threads",
        "1",
        "--repeats",
        "2",
        "--budget",
        "0",
        "--no-progress",
        "--out",
        str(out),
        "--chart",
        str(tmp_path / "docs" / "chart.png"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "fwd+bwd x" in proc.stdout and "nn.LSTM-packed" in proc.stdout
    assert f"wrote {out / 'results.json'}" in proc.stdout
    data = json.loads((out / "results.json").read_text())
    env, config, rows = data["environment"], data["config"], data["rows"]
    assert env["device"] == "cpu" and env["dtype"] == "float32" and env["torch_threads"] == 1
    assert config["shapes"] == TINY.split(",")
    assert config["command"].startswith("fastlstm bench --shapes")
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["repeats"] == 2 for r in ok)
    assert {r["status"] for r in rows} <= {"ok", "not applicable"}
    assert (out / "results.csv").read_text().count("\n") == len(rows) + 1
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "docs" / "chart.png").read_bytes() == (out / "speedup.png").read_bytes()
    markdown = (out / "results.md").read_text()
    assert config["command"] in markdown and "| nn.LSTM-packed |" in markdown


def test_bench_list_names_grids_shapes_providers(capsys):
    assert main(["bench", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "quick" in listing and "pytorch" in listing and "python-loop" in listing


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(["--shapes", "T5-B2"], "--shapes: shape 'T5-B2': missing I, H", id="shape"),
        pytest.param(["--providers", "cudnn"], "--providers: unknown 'cudnn'", id="provider"),
        pytest.param(["--modes", "bwd"], "--modes: got 'bwd'", id="mode"),
        pytest.param(["--repeats", "0"], "--repeats: expected at least 1", id="repeats"),
        pytest.param(["--budget", "-1"], "--budget: expected 0 or more", id="budget"),
        pytest.param(["--threads", "0"], "--threads: expected at least 1", id="threads"),
        pytest.param(
            ["--compile-workers", "-1"], "--compile-workers: expected 0 or more", id="workers"
        ),
        pytest.param(["--device", "tpu"], "--device: cannot read 'tpu'", id="device-name"),
        pytest.param(["--device", "meta"], "--device: 'meta' is not supported", id="device-type"),
    ],
)
def test_bad_options_are_one_line_errors(args, message, capsys, tmp_path):
    assert main(["bench", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastlstm bench: error: ") and message in err
    assert len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_device_without_cuda_is_refused(capsys, tmp_path):
    assert main(["bench", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_triton_on_cpu_is_refused_without_the_interpreter(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["bench", "--providers", "fastlstm-triton", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "fastlstm-triton cannot run on cpu:" in err and "TRITON_INTERPRET=1" in err


def test_full_and_shapes_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--full", "--shapes", "quick"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_out_must_be_a_directory(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("")
    assert main(["bench", "--shapes", "T3-B1-I2-H2", "--out", str(file)]) == 2
    assert "is not a directory" in capsys.readouterr().err
