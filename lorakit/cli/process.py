"""What only the command line does to the process around a run: torchrun's process group, and glibc's malloc
settings while a run loads and trains (``TRAIN_HOOKS``, which ``lorakit train`` and ``lorakit demo`` hand to
``lorakit.runs.train_run``).

Library code never calls these (glibc can neither report nor restore its settings, so a library call would change
the process for everyone in it). ``lorakit train``, ``lorakit demo`` and the benchmarks do, around their own runs.
Set ``LORAKIT_TUNE_MALLOC=0`` to turn the allocator tuning off; a threshold you chose yourself
(``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``) always wins.

Two findings shape this module (measured on the built-in model, CPU):

- A run's peak RSS crept up with every new batch length (the demo: 2.1 GB at step 1, 4.35 GB at step 240)
  because oneDNN caches kernels per shape and glibc's heap fragments around them. The fix is in the batches
  (``--pad-to-multiple-of``: a few lengths repeat). Trimming the heap after every step (``return_free_memory``)
  only halved the creep and cost 19% of the step, so it is not used there.
- glibc moves its mmap threshold up each time a mapped block is freed (from 128 KiB to at most 32 MiB), so which
  activations land in the heap depends on what was freed before (loading, quantising). ``fix_mmap_threshold``
  pins it at 4 MiB for training, so that no longer varies between methods, at no measured cost.
- Even so, the same QLoRA or LoRA step peaked in one of two modes ~300-400 MiB apart from one run to the next:
  the step's allocations were the same, byte for byte, but the heap they landed in was not. Loading left free
  holes in it whose layout varied (the Rust tokenizer allocates in hash-map order, which changes from run to
  run, and blocks its threads allocated end up in the main thread's malloc cache), and at every decoder layer
  the activations either fit those holes or grew the heap ~9 MiB further. ``loading_heap`` maps loading's
  larger blocks instead, so the heap the first step starts from is compact (3 MiB free in it instead of
  200-280). NF4 probe runs with the first step in the high mode: 26 of 44 before, 2 of 41 after;
  bench.qlora_memory: 6 of 18 runs (bf16, int8, NF4) before, 1 of 18 after. Loading takes no longer.
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
"""Blocks of this size and more get their own mapping when the heap has no free room for them. 256 KiB made a
step 60% slower; at 4 MiB the demo's speed and peak RSS did not change (2.461 vs 2.489 s/step, 2,784 vs 2,786 MB)."""


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
