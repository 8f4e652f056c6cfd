"""Process-wide settings that make CPU inference faster; opt-in, since they change the whole process."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep freed memory in the process instead of handing it back to the OS at every free.

    Why: PyTorch's CPU tensors come from malloc, and glibc serves large requests with fresh pages that it unmaps
    (or trims) again on free, so every large temporary costs one page fault per 4 KiB page, zeroing included. The
    selective scan and the models around it create many temporaries of a few MB per call: on a 2-core machine the
    faults were 15-30 % of the speech demo's CPU time (sys time 0.2-0.7 s per second of audio), and near 0 with
    these settings. The price: the process keeps up to ``trim_threshold`` bytes of freed memory for reuse, and
    requests up to ``mmap_threshold`` (glibc's maximum, 32 MiB) come from the heap.

    Returns True when the settings took effect, False where the C library is not glibc (macOS, Windows, musl):
    nothing changes there.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
