"""The built-in contacts task's evaluation: greedy replies to the held-out messages, scored by ``contacts_metrics``."""

from __future__ import annotations

import time
from typing import Any

from lorakit.data.jsonl import read_jsonl
from lorakit.eval.generate import generate_all
from lorakit.eval.replies import reply_budget
from lorakit.tasks.contacts import builtin_path, reference_of
from lorakit.tasks.contacts_metrics import score_all, score_reply

SHOWN = ("n", "json_valid", "exact_match", "field_accuracy")  # the scores the demo's before/after table shows


def evaluate_contacts(
    model: Any,
    tokenizer: Any,
    data: str | None = None,
    limit: int | None = None,
    batch_size: int = 50,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """Generate a reply for each held-out message and score it; returns the metrics and the predictions."""
    source = str(data) if data else str(builtin_path("eval"))
    records = read_jsonl(source)[:limit] if limit else read_jsonl(source)
    references = [reference_of(r) for r in records]
    budget = reply_budget(tokenizer, [r["messages"][-1]["content"] for r in records])
    started = time.perf_counter()
    replies = generate_all(model, tokenizer, [r["messages"] for r in records], budget, batch_size, progress, desc)
    metrics: dict[str, Any] = score_all(replies, references)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    metrics["predictions"] = [
        {"message": r["messages"][-2]["content"], "reference": ref, "reply": reply, **score_reply(reply, ref)}
        for r, ref, reply in zip(records, references, replies, strict=True)
    ]
    metrics["data"] = source
    return metrics


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scores of ``evaluate_contacts``'s result that the demo's table shows."""
    return {k: metrics[k] for k in SHOWN if k in metrics}
