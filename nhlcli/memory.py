"""Process-wide CPU memory settings, applied once at program start (before torch is imported).

Kept apart from the model code so the ``nhl`` command can apply them without importing torch:
commands that never touch a tensor start in a second instead of three.
"""

from __future__ import annotations

import ctypes
import sys


def keep_freed_cpu_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    By default glibc serves allocations over 32 MB with fresh ``mmap`` pages and unmaps them
    on free, so every large tensor is page-faulted (and zeroed by the kernel) again on each
    forward. A batched level allocates few, large tensors, so on CPU this costs it about 40% of
    its time at 1000 leaves (benchmarks/bench_branches.py ``--alloc``). This process-wide
    setting serves large blocks from the heap and never trims it: freed memory is reused, and
    resident memory stays at its peak, as with PyTorch's CUDA caching allocator. Call it once
    at program start; returns whether it applied (glibc only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, -1))  # -1: never
