"""The GPU check can start on a bare machine: its dry run passes from a plain checkout.

A lent GPU machine gets a copy of the working tree and a ``python3`` with torch, triton and
pytest, but fastlstm is not installed there and nothing can be installed (no network). This
test rebuilds that situation: it copies the repository's tracked files to a temporary
folder and runs ``bash benchmarks/gpu_check.sh --dry-run OUT`` with a ``python3`` that
starts with ``-S`` (so no ``.pth`` file runs, and the editable install's finder with it)
and sees only site-packages; any import or step that needs an installed fastlstm fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from fastlstm.bench.shapes import GRIDS

ROOT = Path(__file__).resolve().parents[2]
OUT_FILES = {
    "environment.txt",
    "tests.log",
    "summary.md",
    "train.json",
    "design_table.json",
    "bench/results.md",
    "bench/results.json",
    "bench/speedup.png",
}
DESIGNS = ("persistent", "step", "batch")


def _tracked_copy(dest: Path) -> Path:
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=False
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot tell which files a clone would have")
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():  # listed but deleted in the working tree: skip
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _bare_python(bin_dir: Path) -> dict[str, str]:
    """An environment whose ``python3`` has site-packages but no installed fastlstm."""
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python = bin_dir / "python"  # only python3 is promised on the GPU machine
    python.write_text('#!/bin/sh\necho "gpu_check must call python3, not python" >&2\nexit 127\n')
    for script in (python3, python):
        script.chmod(0o755)
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {k: v for k, v in os.environ.items() if k not in ("FASTLSTM_IMDB_PATH", "PYTHONPATH")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(paths),
        OMP_NUM_THREADS="1",
    )
    return env


@pytest.mark.slow
def test_dry_run_passes_from_a_plain_checkout(tmp_path):
    checkout = _tracked_copy(tmp_path / "checkout")
    env = _bare_python(tmp_path / "bin")
    probe = subprocess.run(
        ["python3", "-c", "import fastlstm.kernels as k; print(k.__file__)"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).is_relative_to(checkout), "fastlstm came from elsewhere"

    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", str(out)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == OUT_FILES  # at most 8 files come back from the GPU machine
    assert str(checkout) in (out / "environment.txt").read_text()  # fastlstm from the copy

    markdown = (out / "bench/results.md").read_text()
    for shape in GRIDS["gpu-dry"]:
        for dtype in ("float32", "tf32", "float16"):
            for design in DESIGNS:
                assert f"| {shape.id} | {dtype} | fastlstm-triton-{design} | triton |" in markdown
            assert f"| {shape.id} | {dtype} | nn.LSTM-control | - |" in markdown
        row = f"| {shape.id} | bfloat16 | fastlstm-triton-step | - |"
        assert row in markdown and "unavailable" in markdown.split(row)[1].splitlines()[0]
    for design in DESIGNS:
        assert f"| triton {design} vs nn.LSTM (padded) |" in markdown
    results = json.loads((out / "bench/results.json").read_text())
    assert results["config"]["shapes"] == [s.id for s in GRIDS["gpu-dry"]]
    assert results["config"]["dtypes"] == ["tf32", "bfloat16", "float32", "float16"]
    assert results["config"]["compile_workers"] == 2
    assert not [r for r in results["rows"] if r["status"] in ("error", "check failed")]

    # The design table: every precision and shape, no ratio where nothing ran (bfloat16),
    # and named so that it applies to no GPU.
    table = json.loads((out / "design_table.json").read_text())
    assert table["device"].startswith("not a GPU: cpu (")
    assert table["commit"] == results["environment"]["git_commit"]
    entries = {(e["precision"], e["B"], e["H"]): sorted(e["ratios"]) for e in table["entries"]}
    assert entries == {
        (precision, shape.B, shape.H): [] if precision == "bf16" else sorted(DESIGNS)
        for precision in ("tf32", "bf16", "ieee", "fp16")
        for shape in GRIDS["gpu-dry"]
    }

    runs = json.loads((out / "train.json").read_text())["runs"]
    assert [(r["preset"], r["backend"]) for r in runs] == [
        ("exercise", "aten"),
        ("exercise", "triton"),
        ("default", "aten"),
        ("default", "triton"),
    ]
    assert all(r["epoch_seconds"] > 0 for r in runs)
    summary = (out / "summary.md").read_text()
    assert "| tests (pytest -m gpu tests) | ok | 0 |" in summary
    assert "| design table (benchmarks/design_table.py) | ok | 0 |" in summary
    assert "| precision | B | H | persistent | step | batch |" in summary
    assert "| train --preset default --backend triton | ok | 0 |" in summary
