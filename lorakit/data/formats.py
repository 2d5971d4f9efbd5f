"""The record formats lorakit trains on, detected per file, each checked and turned into one of three shapes.

| format | a record | becomes |
|---|---|---|
| ``chat`` | ``{"messages": [{"role", "content"}, ...], "tools"?}`` (OpenAI's fine-tuning format too) | chat |
| ``completion`` | ``{"prompt": str, "completion": str}``, or both as message lists (TRL's) | completion, chat |
| ``text`` | ``{"text": str}`` | text |
| ``sharegpt`` | ``{"conversations": [{"from": "human" \\| "gpt" \\| "system", "value"}, ...], "system"?}`` | chat |
| ``alpaca`` | ``{"instruction", "input"?, "output", "system"?, "history"?}`` | chat |
| ``preference`` | ``{"prompt"?, "chosen", "rejected"}``, strings or messages (TRL's; implicit prompt) | preference |

A preference record (DPO's pairs) keeps its own shape, ``{"prompt", "chosen", "rejected"}`` all strings or all message
lists (``lorakit.data.preference`` tokenizes it as two completion or chat examples). The three other shapes are
what ``lorakit.data.tokenize`` renders: chat ``{"messages": [...], "tools"?: [...]}`` through
the tokenizer's chat template with the loss on assistant messages (an assistant message with ``"weight": 0`` is
context, not a target, as in OpenAI's format); completion ``{"prompt", "completion"}`` with the loss on the
completion; text ``{"text"}`` with the loss on every token.

The format of a file is read from its first record's keys (``chosen``, ``messages``, ``conversations``, ``prompt``,
``instruction``, ``text``, in that order, since an Alpaca record often carries a ``text`` column too), or forced;
every record must then be of that format. Keys lorakit does not use are dropped, so they cannot leak into a chat
template that happens to look at them. Every problem is a ``DataError`` that names the file and the record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from lorakit.errors import DataError

DataFormat = Literal["auto", "chat", "completion", "text", "sharegpt", "alpaca", "preference"]
FORMATS: tuple[str, ...] = ("chat", "completion", "text", "sharegpt", "alpaca", "preference")
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
# The key that tells each format apart, in the order they are looked for.
FORMAT_KEYS: tuple[tuple[str, str], ...] = (
    ("chosen", "preference"), ("messages", "chat"), ("conversations", "sharegpt"), ("prompt", "completion"),
    ("instruction", "alpaca"), ("text", "text"),
)  # fmt: skip
DESCRIPTIONS = {
    "chat": "chat ('messages')",
    "completion": "completion ('prompt'/'completion')",
    "text": "text ('text', loss on every token)",
    "sharegpt": "ShareGPT ('conversations')",
    "alpaca": "Alpaca ('instruction'/'input'/'output')",
    "preference": "preference ('prompt'/'chosen'/'rejected')",
}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "chatgpt": "assistant", "system": "system", "tool": "tool", "observation": "tool"}  # fmt: skip


@dataclass(frozen=True)
class Where:
    """Where a record is, for messages: ``file:3`` for a line, ``file: row 3`` for a table row or array record."""

    source: str
    number: int
    unit: Literal["line", "row", "record"] = "line"

    def error(self, message: str) -> DataError:
        if self.unit == "line":
            return DataError(self.source, message, self.number)
        return DataError(self.source, f"{self.unit} {self.number}: {message}")


def detect_format(value: Any, where: Where) -> str:
    """The format a record's keys say (see the module docstring); an error lists what was expected."""
    if not isinstance(value, dict):
        raise where.error(f"expected a JSON object, got {json_type(value)}")
    for key, name in FORMAT_KEYS:
        if key in value:
            return name
    keys = ", ".join(map(repr, list(value)[:8])) or "none"
    raise where.error(
        f"cannot tell the data format from the keys ({keys}): expected 'messages' (chat), 'prompt'/'completion', "
        "'text', 'conversations' (ShareGPT), 'instruction'/'output' (Alpaca) or 'chosen'/'rejected' (preference)"
    )


def convert(value: Any, data_format: str, where: Where, detected_at: Where | None = None) -> dict:
    """One record of a file in ``data_format``, checked and turned into a chat, completion or text record."""
    if not isinstance(value, dict):
        raise where.error(f"expected a JSON object, got {json_type(value)}")
    key = next(k for k, name in FORMAT_KEYS if name == data_format)
    if key not in value:
        how = f"detected from {_short(detected_at)}" if detected_at is not None else "as forced"
        found = detect_or_none(value)
        extra = f", but this record looks like {DESCRIPTIONS[found]}" if found else ""
        raise where.error(
            f"expected a {DESCRIPTIONS[data_format]} record, the file's format ({how}){extra}; use one format per "
            "file (--data-format forces one)"
        )
    return CONVERTERS[data_format](value, where)


def detect_or_none(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    return next((name for key, name in FORMAT_KEYS if key in value), None)


def _short(where: Where) -> str:
    return f"line {where.number}" if where.unit == "line" else f"{where.unit} {where.number}"


# --------------------------------------------------------------------------------------------------- chat


def _chat(value: dict, where: Where) -> dict:
    if "prompt" in value:
        # Guessing which one the user meant would train on the wrong text without telling them.
        raise where.error("record has both 'messages' and 'prompt'; use one format per record")
    record: dict[str, Any] = {"messages": validate_messages(value["messages"], where)}
    tools = value.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise where.error(f"'tools' must be a list of tool definitions (objects), got {json_type(tools)}")
        if tools:
            record["tools"] = tools
    return record


def validate_messages(messages: Any, where: Where, label: str = "messages", learn: bool = True) -> list[dict]:
    """Checked messages: role, content (a string; null or absent only beside ``tool_calls``), ``weight`` 0/1 on an
    assistant message, ``tool_calls`` (``arguments`` decoded to an object, as chat templates expect them).
    ``learn``: at least one assistant message must carry a loss."""
    if not isinstance(messages, list) or not messages:
        raise where.error(f"'{label}' must be a non-empty list of messages")
    out = [_message(message, f"{label}[{i}]", where) for i, message in enumerate(messages)]
    if learn and not any(m["role"] == "assistant" for m in out):
        raise where.error("conversation has no assistant message, so there is nothing to learn")
    if learn and all(m.get("weight") == 0 for m in out if m["role"] == "assistant"):
        raise where.error("every assistant message has weight 0, so there is nothing to learn")
    return out


def _message(message: Any, label: str, where: Where) -> dict:
    if not isinstance(message, dict):
        raise where.error(f"{label} must be an object, got {json_type(message)}")
    if "role" not in message:
        raise where.error(f"{label} has no 'role'")
    role = message["role"]
    if role not in ROLES:
        raise where.error(f"{label} has role {role!r}; expected one of {', '.join(ROLES)}")
    tool_calls = message.get("tool_calls")
    if tool_calls is not None and role != "assistant":
        raise where.error(f"{label}: only an assistant message can have 'tool_calls'")
    if "content" not in message and not tool_calls:
        raise where.error(f"{label} has no 'content'")
    content = message.get("content")
    if content is None and tool_calls:
        content = ""
    out: dict[str, Any] = {"role": role, "content": _content(content, label, where)}
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant":
            raise where.error(f"{label}: 'weight' is for assistant messages only (0: context, 1: trained on)")
        if weight not in (0, 1) or isinstance(weight, bool):
            raise where.error(f"{label}: 'weight' must be 0 or 1, got {json.dumps(weight)}")
        if weight == 0:
            out["weight"] = 0
    if tool_calls:
        out["tool_calls"] = _tool_calls(tool_calls, label, where)
    for key in ("tool_call_id", "name"):  # a tool result names the call it answers
        if role == "tool" and isinstance(message.get(key), str):
            out[key] = message[key]
    return out


def _content(content: Any, label: str, where: Where) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):  # OpenAI's content parts
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
        kinds = sorted({str(p.get("type")) for p in content if p.get("type") != "text"})
        raise where.error(f"{label} content has parts of type {', '.join(kinds)}; only text parts can be trained on")
    raise where.error(f"{label} content must be a string, got {json_type(content)}")


def _tool_calls(calls: Any, label: str, where: Where) -> list[dict]:
    if not isinstance(calls, list):
        raise where.error(f"{label}: 'tool_calls' must be a list, got {json_type(calls)}")
    out = []
    for k, call in enumerate(calls):
        at = f"{label}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise where.error(f"{at} must be an object with 'function': {{'name', 'arguments'}}")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise where.error(f"{at}: 'arguments' is not valid JSON ({exc.msg})") from exc
        if not isinstance(arguments, dict):
            raise where.error(f"{at}: 'arguments' must be a JSON object, got {json_type(arguments)}")
        entry: dict[str, Any] = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out


# ----------------------------------------------------------------------------------------- the other formats


def _completion(value: dict, where: Where) -> dict:
    if "messages" in value:
        raise where.error("record has both 'messages' and 'prompt'; use one format per record")
    if "completion" not in value:
        raise where.error("record has 'prompt' but no 'completion'")
    prompt, completion = value["prompt"], value["completion"]
    if isinstance(prompt, list):  # TRL's conversational prompt-completion: the loss on the completion's messages
        context = [
            {**m, "weight": 0} if m["role"] == "assistant" else m
            for m in validate_messages(prompt, where, "prompt", learn=False)
        ]
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        return {"messages": context + validate_messages(completion, where, "completion")}
    for key in ("prompt", "completion"):
        if not isinstance(value[key], str):
            raise where.error(f"'{key}' must be a string, got {json_type(value[key])}")
    return {"prompt": prompt, "completion": completion}


def _text(value: dict, where: Where) -> dict:
    if not isinstance(value["text"], str):
        raise where.error(f"'text' must be a string, got {json_type(value['text'])}")
    if not value["text"].strip():
        raise where.error("'text' is empty, so there is nothing to learn")
    return {"text": value["text"]}


def _sharegpt(value: dict, where: Where) -> dict:
    turns = value["conversations"]
    if not isinstance(turns, list) or not turns:
        raise where.error("'conversations' must be a non-empty list of turns")
    messages: list[dict[str, Any]] = []
    if isinstance(value.get("system"), str) and value["system"]:
        messages.append({"role": "system", "content": value["system"]})
    for i, turn in enumerate(turns):
        label = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise where.error(f"{label} must be an object, got {json_type(turn)}")
        if "role" in turn:  # some ShareGPT files use chat's keys inside 'conversations'
            messages.append(turn)
            continue
        if "from" not in turn or "value" not in turn:
            raise where.error(f"{label} needs 'from' and 'value'")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            known = ", ".join(SHAREGPT_ROLES)
            raise where.error(f"{label} is from {turn['from']!r}; expected one of {known}")
        message = {"role": role, "content": turn["value"]}
        if "weight" in turn:
            message["weight"] = turn["weight"]
        messages.append(message)
    return {"messages": validate_messages(messages, where, "conversations")}


def _alpaca(value: dict, where: Where) -> dict:
    for key in ("instruction", "output"):
        if key not in value:
            raise where.error(f"an Alpaca record needs 'instruction' and 'output'; this one has no '{key}'")
    for key in ("instruction", "input", "output", "system"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise where.error(f"'{key}' must be a string, got {json_type(value[key])}")
    messages: list[dict[str, Any]] = []
    if value.get("system"):
        messages.append({"role": "system", "content": value["system"]})
    history = value.get("history") or []  # earlier turns as [instruction, response] pairs (LLaMA-Factory's form)
    if not isinstance(history, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in history
    ):
        raise where.error("'history' must be a list of [instruction, response] pairs of strings")
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    extra = value.get("input") or ""
    user = f"{value['instruction']}\n\n{extra}" if extra.strip() else value["instruction"]
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": value["output"]}]
    return {"messages": messages}


def _preference(value: dict, where: Where) -> dict:
    """TRL's preference record: explicit prompt (a string, or messages with chosen/rejected as messages or strings)
    or implicit (chosen and rejected are whole conversations that open with the same turns, the prompt)."""
    if "rejected" not in value:
        raise where.error("preference record has 'chosen' but no 'rejected'")
    chosen, rejected, prompt = value["chosen"], value["rejected"], value.get("prompt")
    if prompt is None:
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise where.error("a preference record without 'prompt' needs 'chosen' and 'rejected' as conversations "
                              "that open with the same turns (the implicit prompt)")  # fmt: skip
        full = [validate_messages(m, where, k, learn=False) for k, m in (("chosen", chosen), ("rejected", rejected))]
        shared = 0
        while shared < min(map(len, full)) and full[0][shared] == full[1][shared]:
            shared += 1
        if shared == 0:
            raise where.error("'chosen' and 'rejected' share no opening turn, so there is no implicit prompt")
        prompt, chosen, rejected = full[0][:shared], full[0][shared:], full[1][shared:]
    if isinstance(prompt, str):
        for key, text in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(text, str):
                raise where.error(f"'prompt' is a string, so '{key}' must be one too, got {json_type(text)}")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    context = [{**m, "weight": 0} if m["role"] == "assistant" else m
               for m in validate_messages(prompt, where, "prompt", learn=False)]  # fmt: skip
    out: dict[str, Any] = {"prompt": context}
    for key, reply in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(reply, str):
            reply = [{"role": "assistant", "content": reply}]
        if isinstance(reply, list) and not reply:
            raise where.error(f"'{key}' is the same conversation as the prompt: nothing to prefer or reject")
        out[key] = validate_messages(reply, where, key)
    return out


CONVERTERS: dict[str, Callable[[dict, Where], dict]] = {
    "chat": _chat, "completion": _completion, "text": _text, "sharegpt": _sharegpt, "alpaca": _alpaca,
    "preference": _preference,
}  # fmt: skip


def record_kind(record: dict) -> Literal["chat", "completion", "text", "preference"]:
    """Which of the shapes a converted record has."""
    if "chosen" in record:
        return "preference"
    if "messages" in record:
        return "chat"
    return "completion" if "prompt" in record else "text"


def json_type(value: Any) -> str:
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


def shared_system_prompt(records: list[dict]) -> str | None:
    """The system prompt every record opens with, when they all open with the same one (the demo's do): what a
    model trained on them expects to be told. None for any other data."""
    prompts = {
        r["messages"][0]["content"] if "messages" in r and r["messages"][0]["role"] == "system" else None
        for r in records
    }
    (prompt,) = prompts if len(prompts) == 1 else (None,)
    return prompt or None
