"""Deterministic length-grouped batch order and collation into padded tensors.

Batches are formed from examples of similar length so little compute is spent on padding, while the
order stays random: indices are shuffled, cut into "mega-chunks" of about 50 batches, each chunk is sorted
by length and cut into batches, and finally the batches themselves are shuffled.  Everything is derived
from ``(seed, epoch)`` alone, so a resumed run replays exactly the same batches.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from lorakit.data.tokenize import IGNORE_INDEX, TokenizedExample

BATCHES_PER_CHUNK = 50  # big enough to find similar lengths, small enough to keep the order well mixed


def batch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped into batches for one epoch.

    Every index appears exactly once; all batches have ``batch_size`` indices except possibly one
    smaller batch (the tail of the last chunk), which may end up anywhere in the order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    # A string seed goes through SHA-512 inside random.seed: stable across processes and Python versions
    # (unlike hash()), and distinct for every (seed, epoch) pair (unlike e.g. seed * K + epoch).
    rng = random.Random(f"lorakit.batch_order:{seed}:{epoch}")
    indices = list(range(len(lengths)))
    rng.shuffle(indices)

    chunk_size = batch_size * BATCHES_PER_CHUNK
    batches: list[list[int]] = []
    for chunk_start in range(0, len(indices), chunk_size):
        chunk = indices[chunk_start : chunk_start + chunk_size]
        # Longest first: within a chunk the first batch holds the longest examples.  The sort is stable,
        # so ties keep their shuffled order and the result stays deterministic.
        chunk.sort(key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[start : start + batch_size] for start in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def padded_width(width: int, multiple: int | None) -> int:
    """``width`` rounded up to a multiple of ``multiple`` (unchanged for None or 1)."""
    return width if multiple is None else -(-width // multiple) * multiple


def collate(
    examples: Sequence[TokenizedExample], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad a batch into ``input_ids``, ``attention_mask`` and ``labels`` tensors of shape (B, T).

    ``labels`` are padded with -100 so padding never counts for the loss, whatever ``pad_id`` is (it is
    often the eos id, which *is* a label at the end of every answer).  ``T`` is the longest example,
    rounded up to ``pad_to_multiple_of`` if given (friendlier shapes for some kernels).
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}")
    width = padded_width(max(len(example.input_ids) for example in examples), pad_to_multiple_of)
    batch = len(examples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)  # (B, T)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        if len(example.labels) != n:
            raise ValueError(f"example {row} has {n} input ids but {len(example.labels)} labels")
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)  # (n,)
        attention_mask[row, :n] = 1  # (n,)
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)  # (n,)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def padding_waste(
    lengths: Sequence[int], batches: Sequence[Sequence[int]], pad_to_multiple_of: int | None = None
) -> float:
    """Fraction of positions in the padded batches that are padding (0.0 for no batches)."""
    total = 0
    padded = 0
    for batch in batches:
        if not batch:
            continue
        batch_lengths = [lengths[i] for i in batch]
        width = padded_width(max(batch_lengths), pad_to_multiple_of)
        total += width * len(batch)
        padded += width * len(batch) - sum(batch_lengths)
    return padded / total if total else 0.0
