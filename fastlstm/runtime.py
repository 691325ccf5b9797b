"""Process-wide switches, each in one place: what the environment says (Triton's
interpreter) and how glibc's malloc serves this process (the benchmark's and the trainer's
allocator settings).

A leaf module (no imports from the rest of fastlstm), so that the kernels, the backend
registry, the benchmark and the trainer can all ask the same question the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator

__all__ = ["large_blocks_mapped", "steady_cpu_allocator", "triton_interpreting"]


def triton_interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``).

    Triton reads the variable when it is first imported, so set it before that.
    """
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# glibc mallopt parameters (malloc.h), and glibc's own M_MMAP_MAX.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_GLIBC_MMAP_MAX = 65536
# Whether the last steady_cpu_allocator call in this process asked for heap_only.
_heap_only = False


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is another (no mallopt/malloc_trim)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and libc.mallopt and libc.malloc_trim else None
    except (OSError, AttributeError):
        return None


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
    Freed memory then stays with the process instead of going back to the system; see
    :func:`large_blocks_mapped` for phases that allocate differently. Each call sets all
    three parameters, so a later call without ``heap_only`` maps large blocks again (as
    ``fastlstm train --low-memory`` after a default run in the same process expects).
    Returns a description, or None where the C library is not glibc (nothing is changed
    then).
    """
    global _heap_only
    libc = _libc()
    if libc is None:
        return None
    settings = [
        (_M_MMAP_THRESHOLD, 32 << 20),
        (_M_TRIM_THRESHOLD, 1 << 30),
        (_M_MMAP_MAX, 0 if heap_only else _GLIBC_MMAP_MAX),
    ]
    if not all(libc.mallopt(param, value) for param, value in settings):
        return None
    _heap_only = heap_only
    described = "glibc mallopt: M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB"
    return described + (", M_MMAP_MAX 0" if heap_only else "")


@contextlib.contextmanager
def large_blocks_mapped() -> Iterator[None]:
    """Undo ``heap_only`` for a while: blocks above 32 MiB are mapped again, then unmapped
    when freed, and the heap's free pages go back to the system on entry (``malloc_trim``).

    For a phase with other, bigger allocations than the rest of the run (the trainer's
    evaluation on batches of 256 reviews, after training steps of 64): kept in the heap,
    its blocks would come on top of the training steps' free memory and fragment the heap
    for both. Measured on the default IMDB run, peak resident: 3.7 GB before ``heap_only``,
    6.3-7.3 GB with it, 5.9 GB with evaluation inside this. Does nothing unless the last
    ``steady_cpu_allocator`` call asked for ``heap_only``.
    """
    libc = _libc() if _heap_only else None
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
    libc.malloc_trim(0)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, 0)
