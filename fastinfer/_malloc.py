"""fastinfer.tune_malloc: fixed glibc malloc thresholds for a process that allocates large tensors on every call.

Every op (fastinfer's and torch's) returns a new tensor. glibc's malloc serves a large block from its own
mapping when the block is above a threshold, and that threshold moves as the process frees blocks; it also
hands free memory at the top of its heap back to the system above a second threshold. So, depending on the
order of allocations, a model's multi-MB activations are sometimes mapped, page-faulted in and unmapped again
on every call, and sometimes not: the same forward then takes two different times (1.3-1.5x apart on a
transformer encoder at batch 8, benchmarks/RESULTS.md). Fixed thresholds keep such blocks in the heap and
the heap's free memory in the process.
"""
from __future__ import annotations

import ctypes
import platform

from ._args import is_integer

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_INT_MAX = 2**31 - 1  # mallopt takes a C int


def tune_malloc(mmap_threshold: int = 256 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Sets glibc's malloc thresholds for this process, as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in
    the environment would at its start: blocks below ``mmap_threshold`` bytes come from the heap (not a new
    mapping each), and up to ``trim_threshold`` bytes of free heap stay with the process (the cost: memory a
    tensor freed is kept for the next, not returned to the system). Call it once, early; it affects every
    allocation of the process, torch's included. Returns True when glibc took the settings, False where the C
    library is not glibc (musl, macOS, Windows: nothing changes). With jemalloc or tcmalloc preloaded, which
    replace malloc (and avoid the problem), the settings reach nothing, whatever it returns."""
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if not is_integer(value):
            raise TypeError(f"{name} must be an integer number of bytes, got {type(value).__name__} {value!r}")
        if not 0 <= value <= _INT_MAX:
            raise ValueError(f"{name} must be in [0, {_INT_MAX}] bytes, got {value}")
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the process's C library
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)):
        raise ValueError(f"glibc refused mmap_threshold={mmap_threshold}: its manual caps it at {32 << 20} bytes "
                         "(32 MiB, DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems), which some versions enforce")
    if not mallopt(M_TRIM_THRESHOLD, int(trim_threshold)):
        raise ValueError(f"glibc refused trim_threshold={trim_threshold}")
    return True


__all__ = ["tune_malloc"]
