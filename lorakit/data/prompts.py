"""Prompts to sample from (GRPO's data): any chat, prompt-completion or prompt-only record, its reference reply, and
its other columns for the rewards.

| a record | the prompt | the reference reply |
|---|---|---|
| ``{"messages": [..., {"role": "assistant", ...}]}`` | the messages before the last assistant message | its content |
| ``{"messages": [...]}`` ending with a user turn | all the messages | none |
| ``{"prompt": str or messages, "completion"?: str or messages}`` | ``prompt`` | the completion (its last content) |

Every other key of the record is kept as a column (TRL passes a dataset's columns to its reward functions by name).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lorakit.data.formats import Where, json_type, validate_messages
from lorakit.data.sources import read_rows

Prompt = str | list[dict[str, Any]]


@dataclass(frozen=True)
class PromptRecord:
    """A prompt (text or messages), the reference reply when the record has one, and the record's other columns."""

    prompt: Prompt
    reference: str | None = None
    columns: dict[str, Any] = field(default_factory=dict)


def prompt_record(value: Any, where: Where) -> PromptRecord:
    """One record as a ``PromptRecord``; a record of no known shape is an error naming it."""
    if not isinstance(value, dict):
        raise where.error(f"expected a JSON object, got {json_type(value)}")
    if "messages" in value:
        messages = validate_messages(value["messages"], where, learn=False)
        columns = {k: v for k, v in value.items() if k != "messages"}
        if messages[-1]["role"] == "assistant":
            if len(messages) == 1:
                raise where.error("the conversation is only an assistant message: there is no prompt to sample from")
            return PromptRecord(messages[:-1], messages[-1]["content"], columns)
        return PromptRecord(messages, None, columns)
    if "prompt" not in value:
        raise where.error("a prompt record needs 'messages' or 'prompt' (TRL's prompt-only and prompt-completion)")
    prompt, completion = value["prompt"], value.get("completion")
    columns = {k: v for k, v in value.items() if k not in ("prompt", "completion")}
    if isinstance(prompt, list):
        prompt = validate_messages(prompt, where, "prompt", learn=False)
    elif not isinstance(prompt, str) or not prompt:
        raise where.error(f"'prompt' must be a non-empty string or a list of messages, got {json_type(prompt)}")
    if isinstance(completion, list):
        completion = validate_messages(completion, where, "completion", learn=False)[-1]["content"]
    elif completion is not None and not isinstance(completion, str):
        raise where.error(f"'completion' must be a string or a list of messages, got {json_type(completion)}")
    return PromptRecord(prompt, completion, columns)


def read_prompts(data: str | os.PathLike[str] | Sequence[Any], source: str = "records") -> list[PromptRecord]:
    """The prompt records of a file (any source ``lorakit.data.sources`` reads) or of records in memory."""
    if isinstance(data, (str, os.PathLike)):
        rows = read_rows(os.fspath(data))
    else:
        rows = [(value, Where(source, n, "record")) for n, value in enumerate(data, start=1)]
    if not rows:
        raise Where(source, 1, "record").error("no records")
    return [prompt_record(value, where) for value, where in rows]
