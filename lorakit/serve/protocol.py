"""OpenAI's wire format: request bodies (validated strictly: a string where a number belongs is a 400, as in
OpenAI's API, not silently converted; a field this server does not implement is a 400 that names it, never
ignored) and the response and stream-chunk objects."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorakit.serve.engine import Event, TokenLogprob

MAX_CHOICES = 8  # the largest n a request may ask
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat (5 for completions)
_UNION_MEMBER = re.compile(r"str|int|float|bool|[\w-]+\[.*\]")  # how pydantic names a union's member in a location


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                409: "invalid_request_error", 413: "invalid_request_error"}  # fmt: skip
        return {
            "error": {"message": self.message, "type": kind.get(self.status, "server_error"), "param": self.param,
                      "code": self.code}
        }  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content)


class JsonSchema(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None  # the grammar always enforces the schema


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampled(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None  # OpenAI's for chat; accepted by completions too, as in vLLM
    user: str | None = None  # an end-user id for the caller's own logs: nothing to implement

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Sampled:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        return self

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return value

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def constraint(self) -> tuple[bool, dict[str, Any] | None]:
        """(constrained, schema): (False, None) for free text, (True, None) for any JSON object."""
        fmt = self.response_format
        if fmt is None or isinstance(fmt, TextFormat):
            return False, None
        return True, fmt.json_schema.schema_ if isinstance(fmt, JsonSchemaFormat) else None


class ChatRequest(_Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: only allowed when logprobs is true")
        return self

    def top_logprobs_asked(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def conversation(self) -> list[dict[str, str]]:
        roles = {"developer": "system"}
        return [{"role": roles.get(m.role, m.role), "content": m.text()} for m in self.messages]


class CompletionRequest(_Sampled):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(default=None, ge=0, le=5)  # the legacy API: how many top tokens, 0: chosen only
    echo: Literal[False] = False

    def top_logprobs_asked(self) -> int | None:
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(value, list) and (not value or (isinstance(value[0], str) and len(value) != 1)):
            raise ValueError("prompt must be a string, a list of one string, or a list of token ids")
        return value


class LoadLoraAdapter(_Strict):
    """vLLM's ``/v1/load_lora_adapter`` body; here ``lora_path`` must lie inside the server's ``--adapter-dir``
    (relative paths are taken from it)."""

    lora_name: str
    lora_path: str
    load_inplace: Literal[False] = False


class UnloadLoraAdapter(_Strict):
    """vLLM's ``/v1/unload_lora_adapter`` body (``lora_int_id`` is vLLM's internal number: accepted, unused)."""

    lora_name: str
    lora_int_id: int | None = None


def parse(kind: type[_Strict], body: Any) -> Any:
    """Validate a decoded JSON body, turning pydantic's errors into one 400 message naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return kind.model_validate(body)
    except ValidationError as err:
        raise validation_error(err.errors()) from None


def validation_error(errors: Any) -> ApiError:
    """One 400 naming the first field pydantic (or FastAPI, whose locations start with "body") refused."""
    first = next(iter(errors))
    loc = [str(p) for p in first.get("loc", ())]
    if loc[:1] == ["body"]:
        loc = loc[1:]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})")
    if first.get("type") == "model_attributes_type" and not loc:
        return ApiError(400, "the request body must be a JSON object")
    # A union's member is named in the location ("stop.str", "response_format.json_schema.json_schema"): drop it,
    # the fields are what a client knows.
    loc = [p for i, p in enumerate(loc) if not _UNION_MEMBER.fullmatch(p) and loc[i - 1 : i] != ["response_format"]]
    where = ".".join(loc)
    if first.get("type") == "extra_forbidden":
        return ApiError(400, f"{where}: this server does not implement this field", param=where, code="unsupported")
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if message.startswith(f"{where}: "):
        message = message[len(where) + 2 :]
    return ApiError(400, f"{where}: {message}" if where else message, param=where or None)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class TokenTexts:
    """Each token's text and exact bytes, for logprobs (a byte-level BPE token may hold part of a UTF-8 character,
    which decoding alone would turn into U+FFFD)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}
        self._bytes_of = {ch: b for b, ch in _byte_level_alphabet().items()}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        if token not in self._cache:
            piece = self.tokenizer.convert_ids_to_tokens(token)
            fallback = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece or "")
            if fallback:
                raw = bytes([int(fallback.group(1), 16)])
            elif piece and all(ch in self._bytes_of for ch in piece):
                raw = bytes(self._bytes_of[ch] for ch in piece)
            else:
                raw = self.tokenizer.decode([token]).encode()
            self._cache[token] = (raw.decode("utf-8", errors="backslashreplace"), list(raw))
        return self._cache[token]


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet: byte -> the printable character that stands for it in the vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _finite(value: float) -> float:
    return max(value, -9999.0)  # JSON has no -Infinity


def chat_logprobs(entries: list[TokenLogprob], texts: TokenTexts) -> dict[str, Any]:
    def item(token: int, logprob: float) -> dict[str, Any]:
        text, raw = texts(token)
        return {"token": text, "logprob": _finite(logprob), "bytes": raw}

    content = [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: list[TokenLogprob], texts: TokenTexts, offset: int = 0) -> dict[str, Any]:
    """The legacy shape; ``offset``: characters of the completion before these tokens."""
    tokens = [texts(e.token)[0] for e in entries]
    offsets = [offset + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    tops = [{texts(t)[0]: _finite(lp) for t, lp in e.top} for e in entries]
    return {"tokens": tokens, "token_logprobs": [_finite(e.logprob) for e in entries], "top_logprobs": tops,
            "text_offset": offsets}  # fmt: skip


@dataclass
class Choice:
    """One finished choice: its text, its last event and its logprobs (None: not asked)."""

    text: str
    last: Event
    logprobs: list[TokenLogprob] | None


def usage(prompt_tokens: int, choices: list[Choice]) -> dict[str, int]:
    completion = sum(c.last.completion_tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def chat_response(rid: str, model: str, prompt_tokens: int, choices: list[Choice], texts: TokenTexts) -> dict[str, Any]:
    listed = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.last.finish_reason,
               "logprobs": None if c.logprobs is None else chat_logprobs(c.logprobs, texts)}
              for i, c in enumerate(choices)]  # fmt: skip
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": listed, "usage": usage(prompt_tokens, choices)}  # fmt: skip


def chat_chunk(
    rid: str, model: str, index: int, delta: dict[str, str], finish: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [choice]}  # fmt: skip


def usage_chunk(rid: str, model: str, kind: str, prompt_tokens: int, choices: list[Choice]) -> dict[str, Any]:
    """The last stream chunk when ``stream_options.include_usage``: no choices, the whole request's usage."""
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(prompt_tokens, choices)}  # fmt: skip


def completion_response(
    rid: str, model: str, prompt_tokens: int, choices: list[Choice], texts: TokenTexts
) -> dict[str, Any]:
    listed = [{"index": i, "text": c.text, "finish_reason": c.last.finish_reason,
               "logprobs": None if c.logprobs is None else completion_logprobs(c.logprobs, texts)}
              for i, c in enumerate(choices)]  # fmt: skip
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": listed, "usage": usage(prompt_tokens, choices)}  # fmt: skip


def completion_chunk(
    rid: str, model: str, index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}]}  # fmt: skip
