"""Process-wide switches of ``fastlstm.runtime``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# Page faults per forward+backward of a one-thread nn.LSTM in a fresh process after
# ``steady_cpu_allocator(heap_only=H)`` for each H of CALLS in turn: oneDNN's backward
# workspace is one block above 32 MiB.
_FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from fastlstm.runtime import steady_cpu_allocator
    for heap_only in {calls}:
        described = steady_cpu_allocator(heap_only=heap_only)
    if described is None:
        sys.exit(3)
    torch.set_num_threads(1)
    lstm = torch.nn.LSTM(65, 64)
    x = torch.randn(200, 64, 65, requires_grad=True)
    def step():
        lstm(x)[0].sum().backward()
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5, described)
    """
)


def _faults_per_step(*calls: bool) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-c", _FAULTS.format(calls=list(calls))], capture_output=True, text=True
    )
    if proc.returncode == 3:
        pytest.skip("the C library is not glibc: steady_cpu_allocator changes nothing")
    assert proc.returncode == 0, proc.stderr
    faults, described = proc.stdout.split(" ", 1)
    return int(faults), described.strip()


def test_heap_only_allocator_stops_the_lstm_backward_faulting_in_its_workspace():
    faults, described = _faults_per_step(False)
    # Measured 8,008: the workspace's pages, mapped afresh on every call.
    assert faults > 4000, faults
    assert "M_MMAP_MAX" not in described
    faults, described = _faults_per_step(True)
    assert faults < 1000, faults
    assert described.endswith("M_MMAP_MAX 0")


def test_a_later_call_without_heap_only_maps_large_blocks_again():
    """The switch is what the last call asked, as its description says, not sticky."""
    faults, described = _faults_per_step(True, False)
    assert faults > 4000, faults
    assert "M_MMAP_MAX" not in described


_PHASES = textwrap.dedent(
    """
    import json, os, sys, torch
    from fastlstm.runtime import large_blocks_mapped, steady_cpu_allocator
    if steady_cpu_allocator(heap_only=True) is None:
        sys.exit(3)
    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    def churn():  # a 256 MiB block, filled and freed; the resident growth it leaves
        before = rss_mib()
        torch.empty(64 << 20).fill_(1)
        return rss_mib() - before
    kept = churn()
    resident = rss_mib()
    with large_blocks_mapped():
        released = resident - rss_mib()
        mapped = churn()
    print(json.dumps({"kept": kept, "released": released, "mapped": mapped, "after": churn()}))
    """
)


def test_large_blocks_mapped_gives_memory_back_for_one_phase():
    proc = subprocess.run([sys.executable, "-c", _PHASES], capture_output=True, text=True)
    if proc.returncode == 3:
        pytest.skip("the C library is not glibc")
    assert proc.returncode == 0, proc.stderr
    mib = json.loads(proc.stdout)
    assert mib["kept"] > 200, mib  # heap_only: the freed block stays resident
    assert mib["released"] > 200, mib  # entering the phase hands it back
    assert mib["mapped"] < 50, mib  # inside, a big block is unmapped when freed
    assert mib["after"] > 200, mib  # and heap_only holds again afterwards
