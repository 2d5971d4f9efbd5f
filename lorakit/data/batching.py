"""Deterministic length-grouped batch order, sequence packing, and collation into padded tensors.

Batches are formed from examples of similar length so little compute is spent on padding, while the
order stays random: indices are shuffled, cut into "mega-chunks" of about 50 batches, each chunk is sorted
by length and cut into batches, and finally the batches themselves are shuffled.  Everything is derived
from ``(seed, epoch)`` alone, so a resumed run replays exactly the same batches.

With packing, several examples share a row of up to ``capacity`` tokens (best-fit decreasing over the epoch's
shuffled examples), and the rows are cut into batches. Each example keeps its own positions (``position_ids``
restart at 0) and sees only itself: transformers builds a block-diagonal causal mask from restarting positions
when no 2-D mask is passed (``masking_utils.find_packed_sequence_indices``; flash-attention kernels take the same
positions as variable-length sequences). The first label of every example is dropped, since the token before it
belongs to the previous example; unpacked, that position has nothing before it and carries no loss either.
"""

from __future__ import annotations

import bisect
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


def pack_order(lengths: Sequence[int], capacity: int, batch_size: int, seed: int, epoch: int) -> list[list[list[int]]]:
    """Batches of ``batch_size`` rows for one epoch; a row is a list of indices into ``lengths`` whose lengths sum
    to at most ``capacity``. Every index appears exactly once (an example longer than ``capacity`` gets a row of its
    own). Best-fit decreasing: longest first, each into the row it fills most tightly."""
    if batch_size < 1 or capacity < 1:
        raise ValueError(f"batch_size and capacity must be at least 1, got {batch_size} and {capacity}")
    rng = random.Random(f"lorakit.pack_order:{seed}:{epoch}")
    indices = list(range(len(lengths)))
    rng.shuffle(indices)
    indices.sort(key=lambda i: lengths[i], reverse=True)  # stable: equal lengths keep their shuffled order
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted: the tightest row with room is found by bisection
    for i in indices:
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k < len(free):
            room, row = free.pop(k)
        else:
            room, row = capacity, len(rows)
            rows.append([])
        rows[row].append(i)
        if room - lengths[i] > 0:
            bisect.insort(free, (room - lengths[i], row))
    rng.shuffle(rows)
    return [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]


def collate_packed(
    rows: Sequence[Sequence[TokenizedExample]], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Rows of packed examples as ``input_ids``, ``attention_mask`` (1: a real token), ``labels`` and
    ``position_ids``, each (B, T). Positions restart at 0 for every example and for the padding after them; the
    model must be called without the 2-D mask (``lorakit.loss`` does so) to see the examples apart."""
    if not rows or not all(rows):
        raise ValueError("cannot collate an empty packed row")
    lengths = [sum(len(e.input_ids) for e in row) for row in rows]
    width = padded_width(max(lengths), pad_to_multiple_of)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    positions = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for r, row in enumerate(rows):
        at = 0
        for example in row:
            n = len(example.input_ids)
            input_ids[r, at : at + n] = torch.tensor(example.input_ids, dtype=torch.long)  # (n,)
            labels[r, at + 1 : at + n] = torch.tensor(example.labels[1:], dtype=torch.long)  # (n - 1,): not the first
            positions[r, at : at + n] = torch.arange(n)  # (n,)
            at += n
        attention_mask[r, :at] = 1
        positions[r, at:] = torch.arange(width - at)  # the padding: a sequence of its own
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "position_ids": positions}
