"""Greedy replies to a user's chat or completion records, scored against their references (``lorakit.eval.metrics``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from lorakit.data.tokenize import completion_prompt
from lorakit.eval.generate import generate_ids, prompt_ids
from lorakit.eval.metrics import score_replies

REPLY_MARGIN = 16
"""Tokens a reply may run past its longest reference: a model that rambles is cut there (and scores 0)."""


def reply_budget(tokenizer: Any, references: Sequence[str]) -> int:
    """``max_new_tokens`` for replies to these references: the longest one in tokens, plus ``REPLY_MARGIN``."""
    return max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references) + REPLY_MARGIN


def evaluate_generation(
    model: Any, tokenizer: Any, records: list[dict], batch_size: int = 16, max_new_tokens: int | None = None,
    progress: bool = True, desc: str = "eval",
) -> dict[str, Any]:  # fmt: skip
    """Greedy replies to chat records (to the conversation before the last assistant message) or completion
    records (to the prompt), scored against that message or the completion (``lorakit.eval.metrics``)."""
    prompts, references, shown = [], [], []
    for record in records:
        if "messages" in record:
            messages = record["messages"]
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompts.append(prompt_ids(tokenizer, messages[:last]))
            references.append(messages[last]["content"])
            shown.append(next((m["content"] for m in reversed(messages[:last]) if m["role"] == "user"), ""))
        else:
            prompts.append(completion_prompt(tokenizer, record["prompt"]))
            references.append(record["completion"])
            shown.append(record["prompt"])
    budget = max_new_tokens or reply_budget(tokenizer, references)
    started = time.perf_counter()
    replies = generate_ids(model, tokenizer, prompts, budget, batch_size, progress, desc)
    means, rows = score_replies(replies, references)
    metrics: dict[str, Any] = {"n": len(records), **means, "seconds": round(time.perf_counter() - started, 1)}
    metrics["predictions"] = [
        {"prompt": prompt, "reference": ref, "reply": reply, **row}
        for prompt, ref, reply, row in zip(shown, references, replies, rows, strict=True)
    ]
    return metrics
