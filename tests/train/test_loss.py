"""The loss shortcuts (head only on label positions, shared prompt prefix) against transformers' own loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lorakit
from lorakit.data.batching import collate
from lorakit.data.jsonl import read_jsonl
from lorakit.data.tokenize import tokenize_dataset
from lorakit.loss import shared_prefix_length, token_loss_sum


def _batch(model_dir: Path, data: Path, n: int = 4) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    model, tokenizer = lorakit.load_model(str(model_dir))
    examples, _ = tokenize_dataset(tokenizer, read_jsonl(data)[:n], 256)
    return model, collate(examples, tokenizer.pad_token_id)


@pytest.mark.parametrize("pad_to_multiple_of", [None, 64])
def test_loss_equals_transformers_loss(
    tiny_model_dir: Path, small_chat_data: Path, pad_to_multiple_of: int | None
) -> None:
    model, batch = _batch(tiny_model_dir, small_chat_data)
    examples, _ = tokenize_dataset(lorakit.load_model(str(tiny_model_dir))[1], read_jsonl(small_chat_data)[:4], 256)
    padded = collate(examples, 0, pad_to_multiple_of)  # pad id 0, unlike the reference batch's
    assert padded["input_ids"].shape[1] % (pad_to_multiple_of or 1) == 0
    n = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        reference = model(**batch).loss  # transformers shifts the labels and averages over label tokens
        for share in (False, True):
            torch.testing.assert_close(
                token_loss_sum(model, padded, share_prefix=share) / n, reference, atol=1e-5, rtol=1e-5
            )


def test_shared_prefix_gives_the_same_gradients(tiny_model_dir: Path, small_chat_data: Path) -> None:
    model, batch = _batch(tiny_model_dir, small_chat_data)
    # The built-in contacts data share a system prompt of dozens of tokens.
    prefix = shared_prefix_length(batch)
    assert prefix > 30
    assert (batch["labels"][:, : prefix + 1] == -100).all()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    grads = []
    for share in (False, True):
        model.zero_grad()
        token_loss_sum(model, batch, share_prefix=share).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4)


def test_no_shared_prefix_for_different_prompts() -> None:
    batch = {
        "input_ids": torch.tensor([[1, 2, 3] * 6, [1, 2, 4] * 6]),
        "attention_mask": torch.ones(2, 18, dtype=torch.long),
        "labels": torch.full((2, 18), -100),
    }
    assert shared_prefix_length(batch) == 0
    batch["input_ids"][1] = batch["input_ids"][0]
    batch["labels"][:, 12:] = 5
    assert shared_prefix_length(batch) == 11


@pytest.mark.parametrize(
    ("chunk", "rows_multiple"),
    [
        (3, 1),  # chunks of 3, 3, 3, 1 rows, none padded
        (3, 64),  # the last chunk's 1 row padded to 3 (never beyond one chunk)
        (4, 3),  # chunks of 4, 4, 2 rows; the 2 padded to 3
    ],
)
def test_chunked_head_cross_entropy_matches_full_cross_entropy_float64(chunk: int, rows_multiple: int) -> None:
    from lorakit.loss import head_cross_entropy_sum

    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(6, 11, dtype=torch.float64).requires_grad_(False)
    hidden = torch.randn(10, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.randint(0, 11, (10,), generator=gen)
    hidden2 = hidden.detach().clone().requires_grad_()
    loss = head_cross_entropy_sum(head, hidden, targets, chunk=chunk, rows_multiple=rows_multiple)
    reference = torch.nn.functional.cross_entropy(hidden2 @ head.weight.T + head.bias, targets, reduction="sum")
    assert loss.dtype == torch.float64, "float64 hidden states: float64 logits and sum"
    torch.testing.assert_close(loss, reference)
    (2.5 * loss).backward()
    (2.5 * reference).backward()
    torch.testing.assert_close(hidden.grad, hidden2.grad)


def test_chunked_head_in_bf16_autocast_is_close_to_fp32() -> None:
    from lorakit.loss import head_cross_entropy_sum

    gen = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(32, 97, bias=False).requires_grad_(False)
    hidden = torch.randn(40, 32, generator=gen)
    targets = torch.randint(0, 97, (40,), generator=gen)
    reference = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head_cross_entropy_sum(head, hidden, targets, chunk=16)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=2e-2, atol=0.0)
