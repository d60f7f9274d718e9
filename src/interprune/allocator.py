"""Give freed activation memory back to the system at once (glibc), so a long calibration does not grow.

glibc's ``malloc`` serves a large block from its heap once a block of that size has been freed: its mmap
threshold rises with every large free, up to 32 MB. A calibration frees and allocates activations of a few
MB to a few tens of MB thousands of times, in ever-changing sizes, and the heap fragments: on a 251M decoder
with 8 calibration sequences the resident size climbed from 2.5 to 4.7 GB although the live tensors never
grew, and with the threshold fixed at 1 MB the same job peaked at 3.3 GB. Blocks of 1 MB and more then each
get their own mapping, returned when freed; the cost (a page fault per fresh page) is small against the
matrix products that fill them.

It changes the whole process's allocator, so only the data-aware shrink asks for it, and only on glibc.

The price of fresh mappings is a page fault per 4 KB page, and the kernel zeroes each: a DETR-R50
calibration spent 97 s of system time on 150 s of wall time. ``huge_pages`` asks torch to back its
allocations of 2 MB and more with transparent huge pages (``THP_MEM_ALLOC_ENABLE``, read once, at torch's
first allocation): one fault per 2 MB. The same job then took 117 s and 42 s of system time, at the same
peak. The command line sets it for every command before anything is allocated.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["release_promptly", "huge_pages"]

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h); setting it also turns off the dynamic threshold
THRESHOLD = 1 << 20


def release_promptly(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


def huge_pages() -> None:
    """Large torch tensors on transparent huge pages, unless the user set ``THP_MEM_ALLOC_ENABLE``. Only
    effective before torch's first allocation; where the kernel offers no huge pages, nothing changes."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
