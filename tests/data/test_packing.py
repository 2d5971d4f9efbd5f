"""Sequence packing: rows of several examples give the loss and gradients of the same examples unpacked."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from lorakit.adapters import add_adapter
from lorakit.config import LoraConfig
from lorakit.data.batching import collate, collate_packed, pack_order
from lorakit.data.tokenize import IGNORE_INDEX, TokenizedExample
from lorakit.loss import token_loss_sum
from tests.tiny import randomize_lora_b, tiny_llama


def _examples(lengths: list[int], seed: int = 0) -> list[TokenizedExample]:
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(1, 97) for _ in range(n)]
        labels = [t if k >= n // 3 else IGNORE_INDEX for k, t in enumerate(ids)]  # a prompt, then an answer
        out.append(TokenizedExample(ids, labels))
    out.append(TokenizedExample([5, 6, 7, 8], [5, 6, 7, 8]))  # a text record: its first label is a label too
    return out


def _loss_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = token_loss_sum(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_packed_rows_give_the_loss_and_gradients_of_the_unpacked_batch(dtype: torch.dtype) -> None:
    model = tiny_llama().to(dtype)
    assert model.config._attn_implementation == "sdpa"
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    add_adapter(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    randomize_lora_b(model)
    examples = _examples([9, 14, 5, 11, 7])
    unpacked = collate(examples, pad_id=0)
    packed = collate_packed([[examples[0], examples[1], examples[2]], [examples[3], examples[4], examples[5]]], 0, 8)
    assert packed["input_ids"].shape == (2, 32)  # 28 and 22 tokens, padded to a multiple of 8
    assert packed["position_ids"][0, :12].tolist() == [*range(9), 0, 1, 2]  # positions restart per example
    loss_u, grads_u = _loss_and_grads(model, unpacked)
    loss_p, grads_p = _loss_and_grads(model, packed)
    tol = (
        {"atol": 1e-10, "rtol": 1e-9} if dtype == torch.float64 else {"atol": 2e-4, "rtol": 1e-4}
    )  # fp32: sums in another order
    torch.testing.assert_close(torch.tensor(loss_p), torch.tensor(loss_u), **tol)
    assert grads_u.keys() == grads_p.keys() and len(grads_u) == 2 * 7 * 2  # A and B of 7 modules in 2 layers
    for name in grads_u:
        torch.testing.assert_close(grads_p[name], grads_u[name], **tol, msg=name)


def test_packing_without_the_mask_would_differ() -> None:
    """The check can fail: the same packed rows with positions that do not restart mix the examples."""
    model = tiny_llama().double()
    examples = _examples([9, 14])
    unpacked = float(token_loss_sum(model, collate(examples, pad_id=0)))
    packed = collate_packed([examples], 0)
    packed["position_ids"] = torch.arange(packed["input_ids"].shape[1])[None]  # one long sequence
    assert abs(float(token_loss_sum(model, packed)) - unpacked) > 1e-3


def test_pack_order_places_every_example_once_within_capacity() -> None:
    rng = random.Random(1)
    lengths = [rng.randrange(20, 200) for _ in range(500)]
    batches = pack_order(lengths, 384, 8, seed=0, epoch=0)
    rows = [row for batch in batches for row in batch]
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 384 for row in rows)
    assert all(len(b) == 8 for b in batches[:-1])
    fill = sum(lengths) / (384 * len(rows))
    assert fill > 0.95  # best-fit decreasing leaves little room
    assert pack_order(lengths, 384, 8, seed=0, epoch=0) == batches
    assert pack_order(lengths, 384, 8, seed=0, epoch=1) != batches


def test_trainer_trains_packed_rows(tiny_model_dir: Path, small_chat_data: Path) -> None:
    import lorakit

    model, tokenizer = lorakit.load_model(str(tiny_model_dir))
    config = lorakit.TrainConfig(
        r=4, lora_alpha=8, max_steps=2, batch_size=2, lr=1e-3, packing=True, seq_len=512, precision="bf16"
    )  # bf16 on a CPU: the fp32 attention path with the packed mask
    trainer = lorakit.Trainer(model, tokenizer, config)
    data = trainer.tokenize(str(small_chat_data))
    batches = trainer.batches(data)
    assert batches.per_epoch < len(data.examples) / 2  # 24 examples of ~170 tokens: 2-3 a row, 2 rows a batch
    result = trainer.fit(data, progress=False)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))
