"""Process memory: the peak resident size so far, a steadier glibc heap, and handing freed memory back.

Two findings shape this module (measured on the built-in model, CPU):

- A run's peak RSS crept up with every new batch length (the demo: 2.1 GB at step 1, 4.35 GB at step 240)
  because oneDNN caches kernels per shape and glibc's heap fragments around them. The fix is in the batches
  (``--pad-to-multiple-of``: a few lengths repeat). Trimming the heap after every step (``return_free_memory``)
  only halved the creep and cost 19% of the step, so it is not used there.
- glibc moves its mmap threshold up each time a mapped block is freed (from 128 KiB to at most 32 MiB), so which
  activations land in the heap depends on what was freed before: loading, quantising, Python's hash seed. The
  same QLoRA step peaked anywhere between 1.7 and 2.2 GB. ``fix_mmap_threshold`` pins the threshold at 4 MiB
  for training: big blocks are mapped and unmapped on their own, small ones reuse the heap, at no measured cost.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD = 4 << 20
"""Blocks of this size and more get their own mapping when the heap has no free room for them. At 4 MiB a QLoRA
step peaked at 1,717-1,721 MiB over three hash seeds (1,699-2,167 with glibc's moving threshold), and the demo's
training speed and peak did not change."""


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
