"""pytest-benchmark setup for ``pytest benchmarks/ --benchmark-only``.

The benches live in ``bench_*.py`` files, which the normal test run never collects
(``testpaths = ["tests"]``, and pytest only collects ``test_*.py`` by default); this
conftest collects them when ``benchmarks/`` is named on the command line.
"""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastlstm bench")
    group.addoption(
        "--bench-shapes",
        default="full",
        help="grid/shape names or shape texts, as `fastlstm bench --shapes` (default: full)",
    )
    group.addoption(
        "--bench-device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device to benchmark on (default: cuda when present, else cpu)",
    )
    group.addoption(
        "--bench-dtype",
        default="float32",
        help="float32 (default, TF32 off), tf32, bfloat16, float16, float64",
    )
    group.addoption(
        "--bench-providers", default=None, help="comma-separated providers (default: all)"
    )
    group.addoption(
        "--bench-threads",
        type=int,
        default=None,
        help="torch.set_num_threads(N); 1 keeps a shared, busy CPU from stalling parallel ops",
    )


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("--bench-threads", default=None)
    if threads is not None:
        torch.set_num_threads(threads)


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
