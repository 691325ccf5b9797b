"""The wheel ships kernels/ as fastlstm.kernels and no top-level package of its own.

A distribution named ``kernels`` already exists on PyPI, so installing a top-level
``kernels`` package would clash with it.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout(tmp_path):
    # Built without isolation (no download); the SPDX license field needs setuptools 77.
    pytest.importorskip("setuptools", minversion="77")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("fastlstm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"fastlstm"}
    for module in ("__init__.py", "batch.py", "persistent.py", "dispatch.py", "measured.json"):
        assert f"fastlstm/kernels/{module}" in names
