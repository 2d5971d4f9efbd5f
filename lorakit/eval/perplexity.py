"""Mean loss per trained token, and its perplexity, of a model on held-out records."""

from __future__ import annotations

import math
from typing import Any

from lorakit.data.batching import collate
from lorakit.data.sources import read_data
from lorakit.data.tokenize import tokenize_dataset
from lorakit.loss import label_count, mean_token_loss


def evaluate_loss(
    model: Any,
    tokenizer: Any,
    data: str | list[dict],
    seq_len: int = 1024,
    limit: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Mean loss per trained token (assistant, completion, or every token of text records), and its perplexity, on
    a data source or checked records."""
    records = read_data(data).records if isinstance(data, str) else data
    records = records[:limit] if limit else records
    examples, stats = tokenize_dataset(tokenizer, records, seq_len, path=data if isinstance(data, str) else None)
    batches = [
        collate(examples[i : i + batch_size], tokenizer.pad_token_id) for i in range(0, len(examples), batch_size)
    ]
    loss = mean_token_loss(model, batches, autocast_dtype=None)
    count = sum(label_count(b) for b in batches)
    return {
        "n": len(examples), "tokens": count, "loss": round(loss, 5), "perplexity": round(math.exp(loss), 4),
        "truncated": stats.n_truncated, "skipped": stats.n_skipped,
    }  # fmt: skip
