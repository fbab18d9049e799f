"""Keep freed CPU memory for reuse instead of returning it to the OS (glibc).

glibc serves every allocation over 32 MiB with a fresh ``mmap`` and unmaps it when
freed. A cohort's stacked tensors are that large (ten McMahan CNN clients' first
dense layer is 64 MiB) and are allocated anew at every step, so each step faults in
and zeroes some 140 MB of fresh pages: 35,000 page faults and about a third of the
step on this machine. :func:`reuse_cpu_memory` tells glibc to serve large blocks from
its heap and keep freed memory, as jemalloc and tcmalloc do (PyTorch's CPU
performance guide recommends those): the next step reuses the blocks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["reuse_cpu_memory"]

# From glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int)


@functools.cache
def reuse_cpu_memory() -> bool:
    """Make glibc keep and reuse large freed blocks; ``False`` where it cannot (no
    glibc). Process-wide and permanent: freed memory is kept by the process, so its
    resident size stays at its peak. ``run_experiment`` (``fedloom run``) calls it.

    >>> reuse_cpu_memory() in (True, False)
    True
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
