"""Keep freed memory in a worker's heap instead of handing it back to the kernel (glibc only).

By default glibc serves each allocation above a threshold (128 KiB, raised as large blocks are
freed) with its own ``mmap`` and returns it with ``munmap`` when freed, and it trims the top of
the heap once 128 KiB or more is free there. Curation's passes run the same numpy steps chunk
after chunk, with temporaries of a few MiB each, so most of them came as fresh pages that the
kernel had to fault in and zero: ~100k page faults per 60k records in one worker, a few percent
of its time. With larger thresholds the second chunk reuses the first one's heap.

Only processes that curation starts call this (pool workers and forked passes): they are short
lived, so memory they keep is given back when they exit. Elsewhere (another C library, another
system) it does nothing.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap; larger ones (whole-corpus arrays) are still mapped.
MMAP_THRESHOLD = 32 << 20
# Free memory at the top of the heap kept for reuse before it is trimmed.
TRIM_THRESHOLD = 128 << 20


def keep_freed_memory() -> bool:
    """Raise this process's malloc thresholds; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # musl's mallopt exists but does nothing and returns 0; glibc returns 1 on success.
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
