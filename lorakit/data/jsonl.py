"""Reading and validating JSONL training data.

Every problem is reported as one :class:`~lorakit.errors.DataError` naming the file and the 1-based line,
so a user can jump straight to it; nothing is silently dropped, because a quietly skipped record is a
training-set bug that only shows up as a worse model much later.

Two record shapes are accepted (extra keys are ignored):

* chat: ``{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}``
  with at least one assistant message (the only text the loss is computed on);
* completion: ``{"prompt": str, "completion": str}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lorakit.errors import DataError

ROLES: tuple[str, ...] = ("system", "user", "assistant")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read ``path`` and return its records, normalised to only the keys lorakit uses.

    Chat records come back as ``{"messages": [{"role", "content"}, ...]}`` and completion records as
    ``{"prompt", "completion"}``; extra keys (ids, metadata, per-message extras) are dropped so that they
    cannot leak into a chat template that happens to look at them.  Blank lines are skipped.
    """
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

    records: list[dict] = []
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
        records.append(_validate_record(value, where, number))

    if not records:
        raise DataError(where, "empty dataset: the file contains no records")
    return records


def _validate_record(value: Any, where: str, line: int) -> dict:
    """Check one parsed line and return its normalised record."""
    if not isinstance(value, dict):
        raise DataError(where, f"expected a JSON object, got {_json_type(value)}", line)
    has_messages = "messages" in value
    has_prompt = "prompt" in value
    if has_messages and has_prompt:
        # Guessing which one the user meant would train on the wrong text without telling them.
        raise DataError(where, "record has both 'messages' and 'prompt'; use one format per record", line)
    if has_messages:
        return {"messages": _validate_messages(value["messages"], where, line)}
    if has_prompt:
        return _validate_completion(value, where, line)
    raise DataError(
        where,
        "record has neither 'messages' (chat format) nor 'prompt'/'completion' (completion format)",
        line,
    )


def _validate_messages(messages: Any, where: str, line: int) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(where, "'messages' must be a non-empty list of messages", line)
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        label = f"messages[{i}]"
        if not isinstance(message, dict):
            raise DataError(where, f"{label} must be an object, got {_json_type(message)}", line)
        for key in ("role", "content"):
            if key not in message:
                raise DataError(where, f"{label} has no '{key}'", line)
        role = message["role"]
        if role not in ROLES:
            raise DataError(where, f"{label} has role {role!r}; expected one of {', '.join(ROLES)}", line)
        content = message["content"]
        if not isinstance(content, str):
            raise DataError(where, f"{label} content must be a string, got {_json_type(content)}", line)
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(where, "conversation has no assistant message, so there is nothing to learn", line)
    return out


def _validate_completion(value: dict, where: str, line: int) -> dict[str, str]:
    if "completion" not in value:
        raise DataError(where, "record has 'prompt' but no 'completion'", line)
    for key in ("prompt", "completion"):
        if not isinstance(value[key], str):
            raise DataError(where, f"'{key}' must be a string, got {_json_type(value[key])}", line)
    return {"prompt": value["prompt"], "completion": value["completion"]}


def _json_type(value: Any) -> str:
    """Name a parsed JSON value the way the user wrote it (object, array...), not as a Python type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def validate_records(records: Sequence[Any], source: str = "records") -> list[dict]:
    """Records given in memory, checked and normalised as ``read_jsonl`` checks a file's lines (a mistake names
    the record's number, counting from 1)."""
    checked = [_validate_record(value, source, number) for number, value in enumerate(records, start=1)]
    if not checked:
        raise DataError(source, "empty dataset: no records")
    return checked
