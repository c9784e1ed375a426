"""Handing freed heap memory back to the system. After a burst of large request bodies
glibc keeps the freed pages in its arenas (the server stayed at 2.7 GiB after a burst that
took it from 1.1 to 3.4 GiB); ``malloc_trim`` returns them, so the next burst starts from the
same place and the pod's memory limit holds across bursts, not only within one."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


@functools.cache
def _libc_malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; True where anything was released."""
    trim = _libc_malloc_trim()
    if trim is None:
        return False
    released = bool(trim(0))
    log.debug("malloc_trim released memory: %s", released)
    return released
