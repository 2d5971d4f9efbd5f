"""Preference pairs (DPO's data) as token ids: each record becomes a chosen and a rejected example over one prompt.

A record of ``lorakit.data.formats``' preference shape is tokenized as two examples of the usual kinds, so the
labels are the ones supervised training would put on the same reply: ``{"prompt": str, "chosen": str, ...}`` as two
completion records (``[bos] prompt reply eos``, the loss on ``reply eos``), a conversational one as two
conversations through the chat template (the loss on the chosen or rejected assistant turns and their end-of-turn
token; assistant turns inside the prompt are context). TRL labels every token after the prompt instead, ChatML's
newline after ``<|im_end|>`` included; the losses are the same functions of the labelled log-probabilities.

A pair longer than ``seq_len`` keeps the first ``seq_len`` tokens of each example; a pair where either example then
has no label left is skipped (DPO needs both), and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lorakit.data.batching import collate
from lorakit.data.tokenize import TokenizedExample, Tokenizer, TokenizeStats, tokenize_example
from lorakit.errors import LorakitError


@dataclass(frozen=True)
class PreferencePair:
    """One record's chosen and rejected examples (the same prompt tokens, then each reply)."""

    chosen: TokenizedExample
    rejected: TokenizedExample

    @property
    def length(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


def pair_records(record: dict) -> tuple[dict, dict]:
    """The chosen and rejected examples of a checked preference record, as completion or chat records."""
    prompt = record["prompt"]
    if isinstance(prompt, str):
        return tuple({"prompt": prompt, "completion": record[k]} for k in ("chosen", "rejected"))  # type: ignore[return-value]
    return tuple({"messages": [*prompt, *record[k]]} for k in ("chosen", "rejected"))  # type: ignore[return-value]


def tokenize_pairs(
    tokenizer: Tokenizer, records: Sequence[dict], seq_len: int, source: str = "records"
) -> tuple[list[PreferencePair], TokenizeStats]:
    """Every preference record as a ``PreferencePair``; an error names the record (1-based)."""
    pairs: list[PreferencePair] = []
    truncated = skipped = tokens = labels = 0
    for number, record in enumerate(records, start=1):
        if "chosen" not in record:
            raise LorakitError(f"{source}: record {number} is not a preference record (no 'chosen'/'rejected')")
        try:
            (chosen, cut_c), (rejected, cut_r) = (tokenize_example(tokenizer, r, seq_len) for r in pair_records(record))
        except LorakitError as exc:
            raise LorakitError(f"{source}: record {number}: {exc}") from exc
        if chosen is None or rejected is None:
            skipped += 1
            continue
        truncated += int(cut_c or cut_r)
        tokens += len(chosen.input_ids) + len(rejected.input_ids)
        labels += chosen.n_label_tokens + rejected.n_label_tokens
        pairs.append(PreferencePair(chosen, rejected))
    if records and not pairs:
        raise LorakitError(f"{source}: every pair is longer than --seq-len {seq_len} (no reply token left)")
    return pairs, TokenizeStats(len(records), truncated, skipped, tokens, labels)


def collate_pairs(pairs: Sequence[PreferencePair], pad_id: int, pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """One batch of 2P rows: the P chosen examples, then the P rejected ones in the same order (TRL's layout)."""
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return collate(rows, pad_id, pad_to_multiple_of)
