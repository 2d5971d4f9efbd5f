"""Scoring for the built-in "contacts" task: is the reply the JSON object asked for, are its details right.

The demo's promise is "reply with only JSON", so a reply is valid only when the whole of it (surrounding
whitespace aside) is one JSON object with exactly the task's keys: a code fence, a sentence of prose or a
list around the object makes it invalid, because a program consuming the reply would fail on it too.
Values are compared exactly after JSON parsing: no case folding, no Unicode normalisation, and types must
match (the string "null" is not null, the number 123 is not the string "123").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lorakit.tasks.contacts import KEYS

_KEY_SET = frozenset(KEYS)
METRICS: tuple[str, ...] = ("json_valid", "exact_match", "field_accuracy")  # per reply, then averaged


class _DuplicateKey(ValueError):
    """A JSON object that names a key twice: its meaning is ambiguous, so the reply is invalid."""


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def parse_reply(reply: str) -> dict[str, Any] | None:
    """The reply as a dict when it is exactly a JSON object with the task's keys (in any order), else None."""
    try:
        value = json.loads(reply.strip(), object_pairs_hook=_pairs_without_duplicates)
    except ValueError:  # json.JSONDecodeError and _DuplicateKey are both ValueErrors
        return None
    if not isinstance(value, dict) or set(value) != _KEY_SET:
        return None
    return value


def _same(value: Any, expected: Any) -> bool:
    """Equal and of the same type, so that True does not pass for 1 nor 1 for 1.0."""
    return type(value) is type(expected) and value == expected


def _check_reference(reference: Mapping[str, str | None]) -> None:
    if set(reference) != _KEY_SET:
        raise ValueError(f"a reference must have exactly the keys {', '.join(KEYS)}, not {sorted(reference)}")


def score_reply(reply: str, reference: Mapping[str, str | None]) -> dict[str, float]:
    """Scores one model reply against the expected details.

    Returns json_valid (1.0/0.0), exact_match (1.0 when valid and all five values are right) and
    field_accuracy (the fraction of the five keys whose value is right; 0.0 for an invalid reply, since
    nothing in it can be used).
    """
    _check_reference(reference)
    parsed = parse_reply(reply)
    if parsed is None:
        return {"json_valid": 0.0, "exact_match": 0.0, "field_accuracy": 0.0}
    right = sum(_same(parsed[key], reference[key]) for key in KEYS)
    return {
        "json_valid": 1.0,
        "exact_match": 1.0 if right == len(KEYS) else 0.0,
        "field_accuracy": right / len(KEYS),
    }


def score_all(replies: Sequence[str], references: Sequence[Mapping[str, str | None]]) -> dict[str, float]:
    """Means of :func:`score_reply` over a set of replies, plus ``n``, the number scored."""
    if len(replies) != len(references):
        raise ValueError(f"{len(replies)} replies but {len(references)} references")
    if not replies:
        raise ValueError("nothing to score: no replies")
    scores = [score_reply(reply, reference) for reply, reference in zip(replies, references, strict=True)]
    n = len(scores)
    means = {name: sum(s[name] for s in scores) / n for name in METRICS}
    return {"n": n, **means}
