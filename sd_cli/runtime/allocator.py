"""While the UNet samples on the CPU, let glibc's malloc keep freed memory for reuse.

By default glibc serves each large allocation with a mapping of its own (above 128 KiB, a
threshold that rises to at most 32 MiB) and unmaps it when freed, and it gives the top of its
heap back to the kernel once more than a threshold lies free there. A UNet call allocates and
frees the same large buffers layer after layer and step after step (oneDNN's re-laid-out copy of
each convolution weight, up to 118 MB in SD 1.5, and the largest activations), so the kernel
zero-fills and faults in each of them again every time. With direct mappings and trimming off,
freed blocks are reused: a 512² fp32 UNet call on the project's CPU 5.5 → 4.9 s, a first call at
64² 1.5 → 0.5 s (docs/benchmarks.md).

Only around sampling: the VAE decoder's buffers double in size at every level, so in the heap
each level's freed blocks are too small for the next and the heap grows instead (a 512² batch of
two, bf16: +1.1 GB of peak memory, against a third off the decode). After sampling, glibc's
behaviour is restored and the freed blocks are given back.

Only the CPU gains (on a GPU the activations are not host memory), only glibc has these knobs,
and a user who set glibc's malloc tunables in the environment keeps theirs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os

# malloc.h parameters and glibc's defaults for them.
M_TRIM_THRESHOLD = -1  # free memory kept at the heap's top; -1 = never trim
M_MMAP_MAX = -4  # how many allocations may have a mapping of their own; 0 = none, all from the heap
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536
USER_TUNABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_depth = 0  # nesting of reusing_freed_memory (denoise calls sample_k, both hold it)


@contextlib.contextmanager
def reusing_freed_memory(device):
    """Within: freed blocks stay in the process for the next allocation (CPU, glibc only)."""
    global _depth
    libc = _glibc() if getattr(device, "type", device) == "cpu" and not _user_tuned_malloc() else None
    if libc is None:
        yield
        return
    if _depth == 0:
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, -1)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)  # give the freed blocks back before the VAE allocates its own


@functools.cache
def _glibc():
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
    except (AttributeError, ValueError, OSError):  # not a GNU system
        return None
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    return libc


def _user_tuned_malloc() -> bool:
    return any(name in os.environ for name in USER_TUNABLES) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
