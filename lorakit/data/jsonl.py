"""Reading JSONL files, and turning rows of any source into checked records (``lorakit.data.formats``).

Every problem is reported as one :class:`~lorakit.errors.DataError` naming the file and the 1-based line (a row
or record number for other sources), so a user can jump straight to it; nothing is silently dropped, because a
quietly skipped record is a training-set bug that only shows up as a worse model much later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.data.formats import FORMATS, DataFormat, Where, convert, detect_format
from lorakit.errors import DataError

Rows = list[tuple[Any, Where]]


@dataclass(frozen=True)
class Records:
    """Checked records of one source, the format they were read as and whether it was detected or forced."""

    records: list[dict]
    data_format: str
    detected: bool
    source: str

    def describe(self) -> str:
        how = "detected" if self.detected else "forced with --data-format"
        return f"{self.source}: {len(self.records)} records, format {self.data_format} ({how})"


def convert_rows(rows: Rows, source: str, data_format: DataFormat | str = "auto") -> Records:
    """Every row as a checked record, in one format: ``data_format``, or the one the first row's keys say."""
    if not rows:
        raise DataError(source, "empty dataset: the file contains no records")
    if data_format != "auto" and data_format not in FORMATS:
        raise DataError(source, f"--data-format must be auto or one of {', '.join(FORMATS)}, got {data_format!r}")
    detected = data_format == "auto"
    first_value, first = rows[0]
    fmt = detect_format(first_value, first) if detected else data_format
    records = [convert(value, fmt, where, first if detected else None) for value, where in rows]
    return Records(records, fmt, detected, source)


def jsonl_rows(path: str | Path) -> Rows:
    """The parsed lines of a JSONL file (blank lines skipped), each with its line number."""
    where = str(path)
    file = Path(path)
    if not file.exists():
        raise DataError(where, "no such file")
    if file.is_dir():
        raise DataError(where, "is a directory, expected a .jsonl file")
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise DataError(where, f"cannot read file: {exc.strerror or exc}") from exc
    rows: Rows = []
    # Split the bytes ourselves (not text mode) so that a decoding error can name its line.
    for number, raw_line in enumerate(raw.split(b"\n"), start=1):
        if number == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
            raw_line = raw_line[3:]  # a UTF-8 byte order mark, as written by some Windows editors
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(where, f"not valid UTF-8 (byte {exc.start + 1} of the line)", number) from exc
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(where, f"invalid JSON: {exc.msg} (column {exc.colno})", number) from exc
        rows.append((value, Where(where, number)))
    return rows


def read_jsonl(path: str | Path, data_format: DataFormat | str = "auto") -> list[dict]:
    """The checked records of a JSONL file (chat, completion or text records; ``lorakit.data.formats``)."""
    return convert_rows(jsonl_rows(path), str(path), data_format).records


def validate_records(
    records: Sequence[Any], source: str = "records", data_format: DataFormat | str = "auto"
) -> list[dict]:
    """Records given in memory, checked and converted as a file's lines are (a mistake names the record's number,
    counting from 1)."""
    rows: Rows = [(value, Where(source, number, "record")) for number, value in enumerate(records, start=1)]
    if not rows:
        raise DataError(source, "empty dataset: no records")
    return convert_rows(rows, source, data_format).records
