"""torchao, imported on first use: the one place lorakit builds quantised tensors.

Why torchao: its ``NF4Tensor`` is QLoRA's format in pure PyTorch (no CUDA kernel), so the same code trains on
CPU and GPU; bitsandbytes, the CUDA reference, needs a GPU. Its ``Int8Tensor`` (weight-only, per-row scales)
is likewise plain ``torch.mm`` on CPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from lorakit.errors import LorakitError

NF4_BLOCK = 64
"""Weights per NF4 block (one absmax scale each), as in QLoRA."""
SCALE_BLOCK = 256
"""Block scales per double-quantisation group (QLoRA's 256), or the largest power of two dividing their count."""


TORCHAO_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")
"""torchao's import logs a warning per CUDA extension it cannot load (all of them on a CPU machine), and torch
one per Enum torchao registers: noise for a user who did not ask for either. transformers imports torchao on
its own import whenever torchao is installed."""


@contextlib.contextmanager
def quiet_logs(*names: str) -> Iterator[None]:
    """Only errors from the loggers ``names`` inside the block."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _torchao() -> Any:
    try:
        with quiet_logs(*TORCHAO_IMPORT_LOGGERS):
            import torchao.quantization as tq
    except ImportError:
        raise LorakitError("quantised models need torchao: pip install torchao") from None
    return tq


def scale_block(n_blocks: int) -> int:
    """Double-quantisation group size: 256 scales where they divide evenly, else the largest power of two
    that does. torchao needs an exact division, and SmolLM2's shapes (e.g. 192 x 576 = 1728 blocks) are not
    multiples of 256 blocks; 64 scales per group still cost only one float per 4096 weights."""
    size = SCALE_BLOCK
    while n_blocks % size:
        size //= 2
    return size


def can_quantize(weight: torch.Tensor, scheme: str) -> bool:
    """NF4 packs two codes per byte in blocks of 64: the weight's size must be a multiple of 64."""
    return scheme == "int8" or weight.numel() % NF4_BLOCK == 0


def quantize_weight(weight: torch.Tensor, scheme: str) -> torch.Tensor:
    """``weight`` (out, in) as a torchao tensor of the same shape and nominal dtype."""
    tq = _torchao()
    weight = weight.detach().contiguous()
    if scheme == "nf4":
        return tq.to_nf4(weight, block_size=NF4_BLOCK, scaler_block_size=scale_block(weight.numel() // NF4_BLOCK))
    if scheme == "int8":
        with quiet_logs(*TORCHAO_IMPORT_LOGGERS):
            from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor

        return Int8Tensor.from_hp(weight, granularity=tq.PerRow())  # symmetric absmax per output row
    raise ValueError(f"unknown quantisation {scheme!r}; use nf4 or int8")
