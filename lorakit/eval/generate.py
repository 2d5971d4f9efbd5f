"""Batched generation for evaluation and the CLI: left padding, KV cache, greedy or sampled."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm import tqdm

from lorakit.data.tokenize import render_prompt


def prompt_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a conversation up to the assistant's turn (the reply, if present, is left out)."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return render_prompt(tokenizer, messages)


def _left_pad(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> list[str]:
    """Replies to ``prompts`` (token ids), decoded without special tokens; stops at end-of-turn."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in _left_pad(prompts, tokenizer.pad_token_id).items()}
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, top_k=None, **sampling,
        )  # fmt: skip
    new = out[:, inputs["input_ids"].shape[1] :]  # (B, new tokens)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in new]


def generate_all(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Greedy replies for many conversations, batched by prompt length (less padding), in input order."""
    prompts = [prompt_ids(tokenizer, c) for c in conversations]
    return generate_ids(model, tokenizer, prompts, max_new_tokens, batch_size, progress, desc)


def generate_ids(
    model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16,
    progress: bool = True, desc: str = "generating",
) -> list[str]:  # fmt: skip
    """Greedy replies to prompts given as token ids, batched by length, in input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    with tqdm(total=len(prompts), disable=not progress, desc=desc, unit="ex", dynamic_ncols=True) as bar:
        for chunk in _chunks(order, batch_size):
            for i, reply in zip(
                chunk, generate_batch(model, tokenizer, [prompts[i] for i in chunk], max_new_tokens), strict=True
            ):
                replies[i] = reply
            bar.update(len(chunk))
    return replies


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
