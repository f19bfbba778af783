"""glibc's malloc in the daemon: a fixed mmap threshold (issue 18 item 4b).

Why: glibc serves a request of at least its mmap threshold (128 KiB at start) with a mapping
of its own, given back to the system when freed. But each time such a block is freed, glibc
raises the threshold to that block's size (up to 32 MiB) and its trim threshold to twice that.
In the daemon, after the first large transient buffer was freed (SQLite's sort and temporary
table buffers, 64-512 KiB; asyncio's 256 KiB receive buffer of every API request; pynetdicom's
commitment PDUs), every later one up to that size was carved out of the heap instead, between
long-lived small allocations, and the heap did not shrink back: its RSS crept with the objects
sent while what was in use stayed flat (heaptrack: the daemon's live heap flat over a 10,000
object soak, glibc's heap and second arena growing). A threshold set by mallopt() stays where
it is (glibc turns the adjustment off), so large transient buffers are mapped and unmapped
each time: a few hundred system calls per 10,000 objects.

Measured with `bench soak` at 30,000 objects (rounds of 5,000, the bench's code with a larger
count): daemon RSS slope +0.34 MB per 1,000 objects with the dynamic threshold (glibc heap
15.8 -> 21.3 MB), +0.16 with the threshold fixed at 128 KiB (heap and arena flat: +0.01 each).

An operator who sets MALLOC_MMAP_THRESHOLD_ in the environment keeps what they set. Not glibc
(musl's mallopt does nothing): nothing changes.
"""

from __future__ import annotations

import ctypes
import os

#: glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
#: glibc's own starting value: requests this large or larger are always mapped
MMAP_THRESHOLD_BYTES = 128 * 1024
#: the environment variable glibc reads for the same setting
ENVIRONMENT_OVERRIDE = "MALLOC_MMAP_THRESHOLD_"


def fix_mmap_threshold(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold once and for all; True if malloc took it, False where it is
    not glibc's, or the environment already sets it (then that value stays)."""
    if ENVIRONMENT_OVERRIDE in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold_bytes) == 1)
