from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lorakit.data.batching import BATCHES_PER_CHUNK, batch_order, collate, padding_waste
from lorakit.data.tokenize import IGNORE_INDEX, TokenizedExample


@settings(deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=512), max_size=700),
    batch_size=st.integers(min_value=1, max_value=16),
    seed=st.integers(min_value=-(2**40), max_value=2**40),
    epoch=st.integers(min_value=0, max_value=1000),
)
def test_every_index_exactly_once_in_full_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> None:
    batches = batch_order(lengths, batch_size, seed, epoch)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    sizes = [len(batch) for batch in batches]
    assert all(0 < size <= batch_size for size in sizes)
    assert sum(size < batch_size for size in sizes) <= 1  # at most one smaller batch
    assert len(batches) == -(-len(lengths) // batch_size)


def test_deterministic_per_seed_and_epoch() -> None:
    lengths = [random.Random(0).randint(1, 300) for _ in range(1000)]
    assert batch_order(lengths, 8, seed=3, epoch=2) == batch_order(list(lengths), 8, seed=3, epoch=2)
    assert batch_order(lengths, 8, seed=3, epoch=2) != batch_order(lengths, 8, seed=3, epoch=3)
    assert batch_order(lengths, 8, seed=3, epoch=2) != batch_order(lengths, 8, seed=4, epoch=2)
    # Seed and epoch are not simply added or multiplied together.
    assert batch_order(lengths, 8, seed=1, epoch=0) != batch_order(lengths, 8, seed=0, epoch=1)


def test_batches_group_similar_lengths_within_a_chunk() -> None:
    lengths = list(range(1, 8 * BATCHES_PER_CHUNK + 1))  # exactly one chunk
    batches = batch_order(lengths, 8, seed=0, epoch=0)
    # One sorted chunk: each batch is 8 consecutive lengths.
    assert sorted(sorted(lengths[i] for i in batch) for batch in batches) == [
        list(range(start, start + 8)) for start in range(1, len(lengths) + 1, 8)
    ]
    # ...but the batches are not in length order.
    firsts = [lengths[batch[0]] for batch in batches]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_edge_cases() -> None:
    assert batch_order([], 4, seed=0, epoch=0) == []
    assert batch_order([5], 4, seed=0, epoch=0) == [[0]]
    with pytest.raises(ValueError, match="batch_size"):
        batch_order([1, 2], 0, seed=0, epoch=0)


def test_grouping_wastes_less_padding_than_random_batches() -> None:
    rng = random.Random(1)
    # Skewed like real chat data: mostly short examples, a long tail of long ones.
    lengths = [min(2048, int(rng.lognormvariate(4.5, 1.0)) + 1) for _ in range(5000)]
    batch_size = 16
    grouped = padding_waste(lengths, batch_order(lengths, batch_size, seed=0, epoch=0))
    shuffled = list(range(len(lengths)))
    rng.shuffle(shuffled)
    random_batches = [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]
    unsorted = padding_waste(lengths, random_batches)
    assert unsorted > 0.5
    assert grouped < 0.25
    assert grouped < unsorted / 3


def test_padding_waste_values() -> None:
    assert padding_waste([4, 2, 2, 1], [[0, 1], [2, 3]]) == pytest.approx((2 + 1) / (8 + 4))
    assert padding_waste([3, 3], [[0, 1]]) == 0.0
    assert padding_waste([], []) == 0.0
    # widths 4 and 2 rounded up to 4: 8 + 8 positions hold 6 + 3 tokens
    assert padding_waste([4, 2, 2, 1], [[0, 1], [2, 3]], pad_to_multiple_of=4) == pytest.approx(7 / 16)


def test_collate_pads_right_with_pad_id_and_ignored_labels() -> None:
    examples = [
        TokenizedExample(input_ids=[5, 6, 7], labels=[IGNORE_INDEX, 6, 7]),
        TokenizedExample(input_ids=[8], labels=[8]),
    ]
    batch = collate(examples, pad_id=2)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(tensor.dtype == torch.long and tensor.shape == (2, 3) for tensor in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]


def test_collate_pad_to_multiple_of() -> None:
    examples = [TokenizedExample(input_ids=[1] * 9, labels=[1] * 9)]
    batch = collate(examples, pad_id=0, pad_to_multiple_of=8)
    assert batch["input_ids"].shape == (1, 16)
    assert batch["attention_mask"].sum().item() == 9
    assert batch["labels"][0, 9:].eq(IGNORE_INDEX).all()
    assert collate(examples, pad_id=0, pad_to_multiple_of=9)["input_ids"].shape == (1, 9)


def test_collate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        collate([], pad_id=0)
    with pytest.raises(ValueError, match="labels"):
        collate([TokenizedExample(input_ids=[1, 2], labels=[1])], pad_id=0)
