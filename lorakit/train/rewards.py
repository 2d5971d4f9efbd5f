"""GRPO's rewards: built-in checks and the user's functions, with TRL's signature, looked up from their names.

A reward is called once per step for all of a rank's completions, as TRL calls one::

    reward(prompts=[...], completions=[...], completion_ids=[...], reference=[...], **other_columns) -> [float | None]

``prompts`` holds each completion's prompt as the record gave it (text, or a message list), ``completions`` the
completions (text for a text prompt; ``[{"role": "assistant", "content": text}]`` for a conversation), ``reference``
each record's reference reply (None when it has none) and every other column of the records is passed by its name.
It returns one float per completion, or None where it does not apply (TRL's convention: a completion that no reward
scores gets advantage 0). Names (``TrainConfig.reward``):

| name | reward |
|---|---|
| ``json`` | 1 when the completion (whitespace aside) is one JSON object, else 0 |
| ``json-schema:FILE`` | 1 when it is a JSON value valid under the JSON Schema in FILE (needs ``jsonschema``), else 0 |
| ``exact`` | 1 when it equals the record's reference reply (whitespace at the ends aside), else 0 |
| ``contacts`` | the built-in contacts task's field accuracy against the reference reply (0 for invalid JSON) |
| ``module:function`` | ``function`` of an importable module |
| ``path/to/file.py:function`` | ``function`` defined in that file |
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError
from lorakit.tasks.contacts_metrics import score_reply

RewardFn = Callable[..., Sequence[float | None]]


@dataclass(frozen=True)
class Reward:
    """A reward function, its name (as given) and its weight in the sum."""

    name: str
    fn: RewardFn
    weight: float = 1.0


def _text(completion: Any) -> str:
    return completion if isinstance(completion, str) else str(completion[-1]["content"])


def json_object(completions: Sequence[Any], **_: Any) -> list[float | None]:
    """1.0 when the completion is one JSON object, whitespace aside."""
    out: list[float | None] = []
    for c in completions:
        try:
            out.append(float(isinstance(json.loads(_text(c).strip()), dict)))
        except ValueError:
            out.append(0.0)
    return out


def exact(completions: Sequence[Any], reference: Sequence[str | None], **_: Any) -> list[float | None]:
    """1.0 when the completion equals the reference reply (ends stripped); None without a reference."""
    return [
        None if r is None else float(_text(c).strip() == r.strip()) for c, r in zip(completions, reference, strict=True)
    ]


def contacts(completions: Sequence[Any], reference: Sequence[str | None], **_: Any) -> list[float | None]:
    """The contacts task's field accuracy against the reference reply (a JSON object of the task's keys)."""
    out: list[float | None] = []
    for c, r in zip(completions, reference, strict=True):
        expected = json.loads(r) if r is not None else None
        if not isinstance(expected, dict):
            raise ValueError(f"the reference reply is not a contacts JSON object: {str(r)[:60]!r}")
        out.append(score_reply(_text(c), expected)["field_accuracy"])
    return out


def json_schema(path: str) -> RewardFn:
    """1.0 for a completion that is JSON valid under the schema in ``path``."""
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LorakitError(f"--reward json-schema:{path}: cannot read the schema ({exc})") from None
    try:
        import jsonschema
    except ImportError:
        raise LorakitError(f"--reward json-schema:{path} needs jsonschema: pip install jsonschema") from None
    validator = jsonschema.validators.validator_for(schema)(schema)

    def reward(completions: Sequence[Any], **_: Any) -> list[float | None]:
        out: list[float | None] = []
        for c in completions:
            try:
                out.append(float(validator.is_valid(json.loads(_text(c).strip()))))
            except ValueError:
                out.append(0.0)
        return out

    return reward


BUILTIN: dict[str, RewardFn] = {"json": json_object, "exact": exact, "contacts": contacts}


def load_reward(name: str, weight: float = 1.0) -> Reward:
    """The reward a name gives (see the module docstring); a name that finds nothing is a one-line error."""
    if name in BUILTIN:
        return Reward(name, BUILTIN[name], weight)
    if name.startswith("json-schema:"):
        return Reward(name, json_schema(name.removeprefix("json-schema:")), weight)
    where, _, function = name.rpartition(":")
    if not where or not function:
        known = ", ".join([*BUILTIN, "json-schema:FILE"])
        raise LorakitError(
            f"--reward {name!r}: not a built-in reward ({known}) nor module:function or file.py:function"
        )
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise LorakitError(f"--reward {name!r}: no such file {where}")
        spec = importlib.util.spec_from_file_location(f"lorakit_reward_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: any error it raises while importing
            raise LorakitError(f"--reward {name!r}: {where} raised {type(exc).__name__} on import: {exc}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise LorakitError(f"--reward {name!r}: cannot import module {where!r} ({exc})") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise LorakitError(f"--reward {name!r}: {where} has no function {function!r}")
    return Reward(name, fn, weight)


def load_rewards(rewards: Sequence[tuple[str, float]]) -> list[Reward]:
    """``TrainConfig.rewards()`` as loaded functions."""
    if not rewards:
        raise LorakitError("--reward: GRPO needs at least one reward")
    return [load_reward(name, weight) for name, weight in rewards]


def score(reward: Reward, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Sequence[list[int]],
          columns: Mapping[str, Sequence[Any]]) -> list[float]:  # fmt: skip
    """The reward's value for each completion (nan for None), checked: one number per completion; an exception it
    raises or a wrong answer is a one-line error naming the function."""
    try:
        values = reward.fn(prompts=list(prompts), completions=list(completions), completion_ids=list(completion_ids),
                           **columns)  # fmt: skip
    except Exception as exc:  # the user's code: whatever it raises is reported in one line
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise LorakitError(f"reward {reward.name!r} raised {type(exc).__name__}: {message}") from None
    if not isinstance(values, (list, tuple)) and not hasattr(values, "tolist"):
        raise LorakitError(f"reward {reward.name!r} returned {type(values).__name__}, not a list of floats")
    values = list(values.tolist() if hasattr(values, "tolist") else values)
    if len(values) != len(completions):
        raise LorakitError(f"reward {reward.name!r} returned {len(values)} values for {len(completions)} completions "
                           "(one float or None per completion)")  # fmt: skip
    out = []
    for i, v in enumerate(values):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
            raise LorakitError(f"reward {reward.name!r} returned {v!r} for completion {i}, not a float or None")
        out.append(float("nan") if v is None else float(v))
    return out
