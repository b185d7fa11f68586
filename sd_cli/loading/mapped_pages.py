"""Give back the pages of a memory-mapped checkpoint once its tensors have been copied.

Checkpoints are memory-mapped (safetensors, and torch.load of zip-format `.ckpt`), so a tensor that
is used as it is costs no copy. A tensor that has to be cast (an fp16 file run in fp32, an fp32 file
run in bf16) or moved to a GPU is copied, and the file pages that copy was read from stay resident
in this process until the whole file is unmapped after loading: the peak is then the model plus
the file. Dropping each source's pages right after its copy (madvise MADV_DONTNEED) keeps the peak
near the model alone. The pages are clean and file-backed (the file is never written through the
mapping), so if anything reads those tensors again the kernel reads them back from the file:
correct data, only slower. Only on Linux, and only inside mappings of the checkpoint's own file;
anywhere else this does nothing.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from pathlib import Path

import torch

_MADV_DONTNEED = 4  # linux/mman.h


class MappedFile:
    """The address ranges this process maps from one file, read from /proc/self/maps."""

    def __init__(self, path: str | os.PathLike):
        self.ranges = _mapped_ranges(Path(path)) if sys.platform.startswith("linux") else []
        self._madvise = _libc_madvise() if self.ranges else None

    def release(self, tensor: torch.Tensor) -> None:
        """Drop this process's pages of `tensor`'s bytes, if they lie in a mapping of the file."""
        if self._madvise is None or tensor.device.type != "cpu" or tensor.nbytes == 0:
            return
        start = tensor.data_ptr()
        end = start + tensor.nbytes
        for low, high in self.ranges:
            if low <= start and end <= high:
                first = start - start % mmap.PAGESIZE
                self._madvise(ctypes.c_void_p(first), ctypes.c_size_t(end - first), _MADV_DONTNEED)
                return


    def release_all(self) -> None:
        """Drop this process's pages of every mapping of the file (a cached OpenVINO graph once it runs)."""
        if self._madvise is None:
            return
        for low, high in self.ranges:
            self._madvise(ctypes.c_void_p(low), ctypes.c_size_t(high - low), _MADV_DONTNEED)


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """[start, end) of every mapping of `path`, matched by device and inode (not by spelling)."""
    try:
        stat = path.stat()
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or int(fields[4]) != stat.st_ino:
            continue
        major, minor = (int(part, 16) for part in fields[3].split(":"))
        if os.makedev(major, minor) != stat.st_dev:
            continue
        low, high = (int(part, 16) for part in fields[0].split("-"))
        ranges.append((low, high))
    return ranges


def _libc_madvise():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


def copied_out(value, device, dtype, channels_last: bool, mapped_file: "MappedFile | None"):
    """A file tensor as the model runs it: on `device`, floating tensors in `dtype`, 4-D weights
    channels-last where asked; the file's pages of it given back once it has been copied. A tensor
    already as it runs stays a view of the file (no copy at all)."""
    import torch

    layout = torch.channels_last if channels_last and value.dim() == 4 else torch.preserve_format
    copy = value.to(device=device, dtype=dtype if value.is_floating_point() else None, memory_format=layout)
    if mapped_file is not None and copy.data_ptr() != value.data_ptr():
        mapped_file.release(value)
    return copy
