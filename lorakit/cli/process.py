"""What only the command line does to the process around a run: torchrun's process group, and glibc's malloc
settings while a run loads and trains (``TRAIN_HOOKS``, which ``lorakit train`` and ``lorakit demo`` hand to
``lorakit.runs.train_run``).

Library code never calls these (glibc can neither report nor restore its settings, so a library call would change
the process for everyone in it). ``lorakit train``, ``lorakit demo`` and the benchmarks do, around their own runs.
Set ``LORAKIT_TUNE_MALLOC=0`` to turn the allocator tuning off; a threshold you chose yourself
(``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``) always wins.

Three findings shape it (measured on the built-in model, CPU; the figures are in docs/speed-and-memory.md):

- A run's peak RSS crept up with every new batch length, because oneDNN caches kernels per shape and glibc's heap
  fragments around them. The fix is in the batches (``--pad-to-multiple-of``: a few lengths repeat); trimming the
  heap after every step (``return_free_memory``) only halved the creep and cost a fifth of each step, so it is not used.
- glibc moves its mmap threshold up each time a mapped block is freed, so which activations land in the heap
  depends on what was freed before (loading, quantising). ``fix_mmap_threshold`` pins it for training, so that
  no longer varies between methods, at no measured cost.
- Even so, the same step peaked in one of two modes some hundreds of MiB apart from one run to the next: its
  allocations were the same, byte for byte, but loading left free holes in the heap whose layout varied (the Rust
  tokenizer allocates in hash-map order, and blocks its threads allocated end up in the main thread's malloc
  cache), and the activations either fit those holes or grew the heap. ``loading_heap`` maps loading's larger
  blocks instead, so the heap the first step starts from is compact; the high mode became rare.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

import torch.distributed as dist

from lorakit.models import resolve_device
from lorakit.runs.job import RunHooks

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD = 4 << 20
"""Blocks of this size and more get their own mapping when the heap has no free room for them: the smallest size
that left the demo's speed and peak RSS as they were (a smaller one slowed the step)."""


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold at ``size`` bytes (which also stops it moving); False where there is no glibc
    or the user already chose one (``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if os.environ.get("LORAKIT_TUNE_MALLOC", "1") == "0":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):
        return False


LOADING_MMAP_THRESHOLD = 64 << 10
"""While a model loads: loading's temporaries of 64 KiB and more (file reads, float weights replaced by quantised
ones, tokenizer tables) get mappings, which are unmapped when freed, instead of leaving holes in the heap."""


@contextlib.contextmanager
def loading_heap() -> Iterator[None]:
    """Load a model with a compact heap: glibc's mmap threshold at ``LOADING_MMAP_THRESHOLD`` inside, pinned at
    ``MMAP_THRESHOLD`` on leaving (as ``fix_mmap_threshold``). Nothing changes where the user chose a threshold."""
    chosen = fix_mmap_threshold(LOADING_MMAP_THRESHOLD)
    try:
        yield
    finally:
        if chosen:
            fix_mmap_threshold()
            return_free_memory()  # what loading freed (float weights replaced by quantised ones) goes back


def return_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``); a no-op where there is no glibc or
    ``LORAKIT_TUNE_MALLOC=0``."""
    if os.environ.get("LORAKIT_TUNE_MALLOC", "1") == "0":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[None]:
    """Under torchrun (WORLD_SIZE > 1) with no process group yet, start one for the run inside and end it after:
    NCCL, each rank on its GPU (cuda:LOCAL_RANK), when ``device`` is a CUDA device (auto: where there is one), else
    gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        yield
        return
    import torch

    cuda = resolve_device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.barrier()
        dist.destroy_process_group()


TRAIN_HOOKS = RunHooks(session=process_group, loading=loading_heap, training=fix_mmap_threshold)
"""A training run's process settings: its process group, a compact heap for loading, the mmap threshold pinned."""
