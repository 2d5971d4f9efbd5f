"""Process memory: the peak resident size so far, a steadier glibc heap, and handing freed memory back.

Two findings shape this module (measured on the built-in model, CPU):

- A run's peak RSS crept up with every new batch length (the demo: 2.1 GB at step 1, 4.35 GB at step 240)
  because oneDNN caches kernels per shape and glibc's heap fragments around them. The fix is in the batches
  (``--pad-to-multiple-of``: a few lengths repeat). Trimming the heap after every step (``return_free_memory``)
  only halved the creep and cost 19% of the step, so it is not used there.
- glibc moves its mmap threshold up each time a mapped block is freed (from 128 KiB to at most 32 MiB), so which
  activations land in the heap depends on what was freed before (loading, quantising). ``fix_mmap_threshold``
  pins it at 4 MiB for training, so that no longer varies between methods, at no measured cost. It does not make
  a step's peak RSS repeatable: the same QLoRA or LoRA step still lands in one of two peaks ~400 MiB apart from
  one run to the next (docs/qlora.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD = 4 << 20
"""Blocks of this size and more get their own mapping when the heap has no free room for them. 256 KiB made a
step 60% slower; at 4 MiB the demo's speed and peak RSS did not change (2.461 vs 2.489 s/step, 2,784 vs 2,786 MB)."""


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold at ``size`` bytes (which also stops it moving); False where there is no glibc
    or the user already chose one (``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):
        return False


def return_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``); a no-op where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MiB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)
