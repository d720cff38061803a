"""CPU tuning: the memory settings and the shortcut that make a training step faster on a CPU.

One component, switched by `TrainConfig.cpu_tuning` and used only by runs on the CPU (on a
GPU, torch's caching allocator already keeps freed memory, and clipping must not wait for
the norm). The trainer calls `start_run` when a run starts, `before_validation` before it
validates, and `clip_gradients` in its step; `request_huge_pages` runs where a process
starts (the CLI, a search's Ray workers), never on import. Each part was kept because it
measurably helps (docs/performance.md, CPU tuning):

- a kept heap: glibc keeps freed blocks for the next step instead of returning them to
  the OS, so a step's large tensors are not faulted in afresh every step;
- huge pages for torch's large CPU tensors: where freed memory is not kept (trials side
  by side), a step faults its tensors in 2 MiB at a time instead of 4 KiB;
- clipping without its second pass when the gradient norm is within bounds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

# No torch import here: `request_huge_pages` must run before torch allocates anything.

# torch's CPU allocator asks for transparent huge pages when this is 1 at its first allocation.
THP_ENV = "THP_MEM_ALLOC_ENABLE"


def request_huge_pages() -> None:
    """Ask torch's CPU allocator for huge pages, unless the user already chose
    (THP_MEM_ALLOC_ENABLE=0 opts out). Only where a process starts: torch reads the
    setting once, at its first allocation."""
    os.environ.setdefault(THP_ENV, "1")


def huge_pages_env() -> dict[str, str]:
    """The environment a new process (a bench child, a Ray worker) needs for huge pages."""
    return {THP_ENV: os.environ.get(THP_ENV, "1")}


# glibc's mallopt parameters.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
# Without the kept heap, blocks above this go back to the OS as soon as they are freed.
RETURNED_BLOCK_BYTES = 4 << 20
KEEP_ENV = "TUNE_ADAPTER_KEEP_FREED_MEMORY"


def start_run(keep_freed_memory: bool = True) -> bool:
    """Set glibc's heap for a CPU run; returns whether freed memory is kept.

    Kept (the default), glibc serves every block from its heap and keeps what is freed
    for the next step, instead of mapping each large tensor fresh and unmapping it on free
    (fresh pages the kernel must zero, every step). Not kept (trials side by side, to save
    their memory), glibc's mmap threshold is pinned low, so large freed blocks go back to
    the OS at once instead of staying resident. Process-wide and lasting.
    TUNE_ADAPTER_KEEP_FREED_MEMORY=0 or 1 overrides `keep_freed_memory`.
    """
    setting = os.environ.get(KEEP_ENV, "").strip()
    if setting:
        keep_freed_memory = setting not in ("0", "false", "no")
    libc = _glibc()
    if libc is None:
        return False
    if not keep_freed_memory:
        libc.mallopt(M_MMAP_THRESHOLD, RETURNED_BLOCK_BYTES)
        return False
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    return True


def before_validation() -> None:
    """Give the kept heap's free pages back (glibc's malloc_trim): validation's tensors
    have other sizes and would otherwise grow the heap past the steps' peak."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def clip_gradients(params: list, max_norm: float) -> None:
    """`clip_grad_norm_`, without its second pass over the gradients when none is needed.

    clip_grad_norm_ always multiplies every gradient by min(1, max_norm / norm) so that a
    GPU never waits for the norm; on the CPU the norm is known at once, and the pass is
    skipped when the norm is within bounds. Same result either way.
    """
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    if norm > max_norm:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)


@functools.cache  # find_library runs ldconfig in a subprocess; validation asks every epoch
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None
