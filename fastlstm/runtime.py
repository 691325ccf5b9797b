"""Process-wide switches read from the environment, each parsed in one place.

A leaf module (no imports from the rest of fastlstm), so that the kernels, the backend
registry and the benchmark can all ask the same question the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

__all__ = ["release_free_memory", "steady_cpu_allocator", "triton_interpreting"]


def triton_interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``).

    Triton reads the variable when it is first imported, so set it before that.
    """
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4


@functools.cache
def steady_cpu_allocator(heap_only: bool = False) -> str | None:
    """Give this process glibc malloc's reused-heap behaviour from the start; says how.

    By default glibc serves large blocks with fresh ``mmap`` pages (a page fault on every
    first touch, every call) until a large block is freed, which raises that threshold for
    the rest of the process. So the same call ran at different speeds depending on what the
    process had done before: measured, ``fastlstm-auto`` forward+backward at
    ``T200-B8-I32-H32-L2-bidir-var10`` took 48 ms in a run of 3 providers and 24 ms with the
    threshold fixed, while the full grid (whose big frees had raised it) read 7x against
    ``nn.LSTM`` where the short run read 5x. Fixing both thresholds (the largest mmap
    threshold glibc accepts, 32 MiB, and no trimming) gives every call the reused-heap
    behaviour of a long-running process; the benchmark runs this way.

    ``heap_only`` also serves the blocks above 32 MiB from the heap (``M_MMAP_MAX`` 0), for
    the trainer: the oneDNN LSTM backward allocates its workspace as one such block, so
    every training step page-faulted it in afresh. Measured on the default IMDB model, one
    thread, 64 reviews of 1,000 tokens: 88,000 page faults and 0.82 s per step before,
    8,700 and 0.71 s after; a whole run spent 20 % of its time in the kernel before.
    Freed memory then stays with the process (up to its peak) instead of going back to the
    system. Returns a description, or None where the C library is not glibc (nothing is
    changed then).
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return None
    settings = [(_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30)]
    if heap_only:
        settings.append((_M_MMAP_MAX, 0))
    if not all(mallopt(param, value) for param, value in settings):
        return None
    described = "glibc mallopt: M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB"
    return described + (", M_MMAP_MAX 0" if heap_only else "")


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim(0)``).

    With :func:`steady_cpu_allocator` keeping freed blocks, a process that switches between
    two workloads (training steps, then evaluation on bigger batches) would hold the free
    memory of both; the trainer calls this between them. Returns False where the C library
    is not glibc (nothing happens then).
    """
    name = ctypes.util.find_library("c")
    try:
        malloc_trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return False
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True
