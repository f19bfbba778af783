"""How much of a file the kernel holds in its page cache: mincore(2) on a mapping of it that
is never touched (mapping faults nothing in, so looking does not change the answer)."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def _check(result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def resident_pages(path: Path) -> int:
    """Pages of `path` in the page cache now."""
    size = path.stat().st_size
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, _MAP_FAILED):
            _check(-1)
        try:
            vec = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
            _check(_libc.mincore(address, size, vec))
            return sum(b & 1 for b in vec.raw)
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)


def page_cache_kept(folder: Path) -> bool:
    """False where a file's clean pages cannot be dropped (tmpfs: the cache is the file)."""
    return _fs_type(folder) not in ("tmpfs", "ramfs")


def _fs_type(folder: Path) -> str:
    """The file system type of the mount `folder` is on (the longest mount point above it)."""
    where = str(folder.resolve())
    best, kind = "", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _device, mount_point, fs_type, *_rest = line.split()
            mount_point = mount_point.replace("\\040", " ")
            above = where == mount_point or where.startswith(mount_point.rstrip("/") + "/")
            if above and len(mount_point) >= len(best):
                best, kind = mount_point, fs_type
    return kind
