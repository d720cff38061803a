"""Huge pages for torch's large CPU tensors, so a step does not page-fault its memory in.

A training step at InfiniteTalk's dims frees and re-allocates about 0.5 GB of large
tensors (weight gradients, per-frame loss terms). glibc maps each one fresh and unmaps it
on free, so every step faults it in again 4 KiB at a time: about a third of the step on
the 2-core bench CPU (bf16 autocast step 314 ms -> 238 ms with huge pages, fp32 297 -> 266
ms; README.md, Performance). torch's CPU allocator asks for transparent huge pages (2 MiB,
512x fewer faults) when THP_MEM_ALLOC_ENABLE=1 is in the environment the first time it
allocates, so this must run before torch allocates anything: the package's __init__
calls it. Set THP_MEM_ALLOC_ENABLE=0 to opt out.

On top of huge pages, `keep_freed_memory` keeps freed blocks in glibc's heap so the next
step reuses them instead of faulting them in again; the trainer turns it on when a run
starts (see its docstring for the figures).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

THP_ENV = "THP_MEM_ALLOC_ENABLE"


def request_huge_pages() -> None:
    """Ask torch's CPU allocator for huge pages, unless the user already chose."""
    os.environ.setdefault(THP_ENV, "1")


def huge_pages_requested() -> bool:
    return os.environ.get(THP_ENV, "0").strip() not in ("", "0")



# glibc's mallopt parameters.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
# Without the kept heap, blocks above this go back to the OS as soon as they are freed.
RETURNED_BLOCK_BYTES = 4 << 20
KEEP_ENV = "TUNE_ADAPTER_KEEP_FREED_MEMORY"


@functools.cache  # find_library runs ldconfig in a subprocess; validation asks every epoch
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def keep_freed_memory(wanted: bool = True) -> bool:
    """Serve every block from glibc's heap and keep what is freed there for the next step.

    glibc hands blocks over 32 MB straight to the OS (mmap) and back on free (munmap), so
    every step's large tensors (gradients, weights repacked to bf16 by oneDNN, the loss's
    per-frame buffers: about 0.7 GB at InfiniteTalk's dims) arrive as fresh pages the kernel
    must zero, and with huge pages it may first compact memory to find them (stalls of
    40-70 ms seen on the bench machine). Kept in the heap, the next step reuses them:
    step 130 -> 110 ms (README.md, Performance), for about 150 MB more resident memory.
    Process-wide and lasting; `release_freed_memory` gives the kept memory back (the
    trainer calls it before validating). TUNE_ADAPTER_KEEP_FREED_MEMORY=0 or 1 overrides
    `wanted`. Returns whether the heap is kept.

    Not wanted (trials side by side), the opposite: glibc's mmap threshold is fixed at 4 MB.
    By default glibc raises it to 32 MB once such a block is freed, and the blocks it then
    serves from the heap stay resident: peak PSS of an InfiniteTalk-sized trial's process
    1509 -> 1413 MB, which brought two trials within the memory target of README.md,
    Performance. It costs speed: epochs 4.0-4.8 s (two runs) against 3.6-4.3 s (one).
    """
    libc = _glibc()
    setting = os.environ.get(KEEP_ENV, "").strip()
    if setting:
        wanted = setting not in ("0", "false", "no")
    if libc is None:
        return False
    if not wanted:
        libc.mallopt(M_MMAP_THRESHOLD, RETURNED_BLOCK_BYTES)
        return False
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    return True


def release_freed_memory() -> None:
    """Return the heap's free pages to the OS (glibc's malloc_trim)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
