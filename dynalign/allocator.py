"""Keep freed memory in the process between training steps (glibc's malloc on Linux).

A probe step allocates and frees the same large tensors every step: a ConvNet's feature maps
and their errors, twice (the rule's backward pass and the reference pass), a few MB each. glibc
serves blocks that large with fresh ``mmap`` calls, or returns the top of its heap to the
system once more than its trim threshold is free, so every step touched its memory anew: one
page fault per 4 KiB. On the default ConvNet (batch 100, one thread) that made the ReLU's
backward pass and the max pool's zero fill about five times slower than on memory already
mapped, and a probe step about 13 ms slower (55 against 41 ms). Raising both thresholds lets
malloc reuse those blocks; what a run holds at its peak is unchanged, the process just keeps
up to ``TRIM_THRESHOLD`` of free memory instead of returning it at once.

The setting is process-wide (it speeds up any large tensors' reuse, plain torch's too) and a
no-op off glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size come from the heap, where freed ones are reused (glibc's largest
#: allowed value on 64-bit systems)
MMAP_THRESHOLD = 32 * 1024 * 1024
#: free memory at the top of the heap kept for reuse before any is returned to the system
TRIM_THRESHOLD = 128 * 1024 * 1024

_DONE: list[bool] = []


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse large freed blocks (once per process); whether it took."""
    if not _DONE:
        _DONE.append(_set_thresholds())
    return _DONE[0]


def _set_thresholds() -> bool:
    if sys.platform != "linux":
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False  # musl, say
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, ValueError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # both are needed: either alone switches off glibc's own adaptive thresholds
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
