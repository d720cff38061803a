"""Huge pages for torch's large CPU tensors, so a step does not page-fault its memory in.

A training step at InfiniteTalk's dims frees and re-allocates about 0.5 GB of large
tensors (weight gradients, per-frame loss terms). glibc maps each one fresh and unmaps it
on free, so every step faults it in again 4 KiB at a time: about a third of the step on
the 2-core bench CPU (bf16 autocast step 314 ms -> 238 ms with huge pages, fp32 297 -> 266
ms; README.md, Performance). torch's CPU allocator asks for transparent huge pages (2 MiB,
512x fewer faults) when THP_MEM_ALLOC_ENABLE=1 is in the environment the first time it
allocates, so this must run before torch allocates anything: the package's __init__
calls it. Set THP_MEM_ALLOC_ENABLE=0 to opt out.

The alternative measured, glibc's mallopt(M_MMAP_MAX=0) so freed blocks stay in the
heap, was a little faster (221 ms) but the heap fragments: peak RSS rose to about
1.93-2.03 GB against 1.68-1.74 GB, over the 1.87 GB target.
"""

from __future__ import annotations

import os

THP_ENV = "THP_MEM_ALLOC_ENABLE"


def request_huge_pages() -> None:
    """Ask torch's CPU allocator for huge pages, unless the user already chose."""
    os.environ.setdefault(THP_ENV, "1")


def huge_pages_requested() -> bool:
    return os.environ.get(THP_ENV, "0").strip() not in ("", "0")
