"""A dataset ready to train on: token ids and labels of every example, what tokenizing did, and where it came from."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lorakit.data.formats import record_kind
from lorakit.data.jsonl import validate_records
from lorakit.data.sources import read_data
from lorakit.data.tokenize import TokenizedExample, Tokenizer, TokenizeStats, tokenize_dataset


@dataclass(frozen=True)
class Dataset:
    """Tokenized examples (``labels`` -100 where there is no loss), their statistics and their source's name."""

    examples: list[TokenizedExample]
    stats: TokenizeStats
    source: str
    data_format: str = "chat"

    def describe(self, seq_len: int) -> str:
        """One log line: size, tokens and what truncation did."""
        s = self.stats
        return (
            f"{self.source} ({self.data_format}): {s.n_records} examples, {s.n_tokens:,} tokens "
            f"({s.n_label_tokens:,} trained on); "
            f"{s.n_truncated} truncated to --seq-len {seq_len}, {s.n_skipped} skipped (nothing left to learn after "
            "truncation)"
        )


DataSource = str | os.PathLike[str] | Sequence[Mapping[str, Any]] | Dataset
"""What ``Trainer.fit`` takes: a data file, ``save_to_disk`` folder or Hub dataset name (``lorakit.data.sources``), a
list of records in any format of ``lorakit.data.formats``, or a ``Dataset`` tokenized before."""


def tokenize_data(
    tokenizer: Tokenizer, data: DataSource, seq_len: int, source: str | None = None, data_format: str = "auto"
) -> Dataset:
    """Read (a path), check (records) and tokenize ``data``; a ``Dataset`` is returned as it is. ``source`` names
    records in messages (default: the path, or "records"); ``data_format`` forces a format (default: detected)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        read = read_data(data, data_format)
        source, records, data_format = source or read.source, read.records, read.data_format
    else:
        source = source or "records"
        records = validate_records(list(data), source, data_format)
        data_format = record_kind(records[0]) if data_format == "auto" else data_format
    examples, stats = tokenize_dataset(tokenizer, records, seq_len, path=source)
    return Dataset(examples, stats, source, data_format)
