"""The HTTP routes (FastAPI): OpenAI's ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``, vLLM's
``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``, ``/health``, and the playground page with the routes it
reads (``lorakit.serve.page``). All generation goes through the one ``Engine``.

Request bodies are typed route parameters, so the OpenAPI schema (``/openapi.json``, ``/docs``) describes them; a
body FastAPI refuses is answered as OpenAI would, a 400 naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from lorakit.adapters import adapter_configs, delete_adapter
from lorakit.errors import LorakitError
from lorakit.eval.generate import prompt_ids
from lorakit.io import load_adapter
from lorakit.methods.mixed import row_adapters
from lorakit.runs.origin import check_same_base, trained_base
from lorakit.serve.engine import Engine, Event, Sampling
from lorakit.serve.engine import Request as EngineRequest
from lorakit.serve.grammar import Grammars, matcher
from lorakit.serve.protocol import (
    ApiError,
    ChatRequest,
    Choice,
    CompletionRequest,
    LoadLoraAdapter,
    TokenTexts,
    UnloadLoraAdapter,
    chat_chunk,
    chat_logprobs,
    chat_response,
    completion_chunk,
    completion_logprobs,
    completion_response,
    new_id,
    usage_chunk,
    validation_error,
)
from lorakit.serve.security import DEFAULT_MAX_REQUEST_BYTES, ApiKeyMiddleware, BodyLimitMiddleware

# An adapter name is one plain folder name: no separators, no "..", nothing a path could hide in.
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
COMPILE_TIMEOUT_S = 30.0  # a schema whose grammar takes longer is refused


@dataclass
class ServerState:
    engine: Engine
    base_name: str
    adapter_dir: Path | None = None
    max_new_tokens: int = 256
    max_input_tokens: int = 2048
    adapters: dict[str, str] = field(default_factory=dict)  # name -> folder it was loaded from
    base_model: str | None = None  # what --model named (None: the built-in): adapters of another base are refused
    system_prompts: dict[str, str] = field(default_factory=dict)  # adapter -> the system prompt it was trained with
    quantization: str | None = None  # the base's: "nf4", "int8", or None for float weights
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        vocab = int(getattr(self.model.config, "vocab_size", 0) or len(self.engine.tokenizer))
        self.grammars = Grammars(self.engine.tokenizer, vocab)
        self.texts = TokenTexts(self.engine.tokenizer)

    @property
    def model(self) -> Any:
        return self.engine.model

    def load(self, name: str, folder: Path) -> None:
        """Load an adapter (on the engine thread) and check that it fits this base and can join mixed batches."""
        if name == self.base_name or name in adapter_configs(self.model):
            raise ApiError(409, f"an adapter or model named {name!r} is already loaded", "lora_name")
        origin = check_same_base(folder, self.base_model)  # one line: an adapter of another base is refused
        trained, served = trained_base(folder), self.quantization or "float"  # as its run's settings say
        if trained is not None and trained != served:
            flag = "none" if trained == "float" else trained
            raise ApiError(400, f"adapter {name!r} was trained on a {trained} base and this server's base is {served}: "
                           f"serve it from a server started with --quantize {flag}", "lora_path")  # fmt: skip
        load_adapter(self.model, folder, name)
        self.model.eval()  # the new LoRA modules start in training mode (their dropout would be on)
        try:
            with row_adapters(self.model, [name]):
                pass
        except LorakitError:
            delete_adapter(self.model, name)
            raise
        self.adapters[name] = str(folder)
        if origin.system_prompt:
            self.system_prompts[name] = origin.system_prompt

    def unload(self, name: str) -> None:
        if name not in self.adapters:
            raise ApiError(404, f"adapter {name!r} is not loaded", "lora_name", "model_not_found")
        if self.engine.in_use(name):
            raise ApiError(409, f"adapter {name!r} has requests in flight; retry when they are done", "lora_name")
        delete_adapter(self.model, name)
        del self.adapters[name]
        self.system_prompts.pop(name, None)


def with_system_prompt(state: ServerState, adapter: str | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation, opened with the adapter's training system prompt when the request sends none."""
    prompt = state.system_prompts.get(adapter) if adapter else None
    if prompt is None or any(m.get("role") == "system" for m in messages):
        return messages
    return [{"role": "system", "content": prompt}, *messages]


def adapter_name(name: str, param: str = "lora_name") -> str:
    if not ADAPTER_NAME.fullmatch(name) or ".." in name:
        raise ApiError(400, f"{param}: {name!r} is not an adapter name (letters, digits, . _ -; up to 100)", param)
    return name


def adapter_folder(state: ServerState, path: str) -> Path:
    """``path`` as a folder inside ``--adapter-dir`` (relative paths start there); anything outside it is refused,
    symbolic links followed."""
    if state.adapter_dir is None:
        raise ApiError(400, "this server was started without --adapter-dir, so it loads no adapters at run time",
                       "lora_path")  # fmt: skip
    root = state.adapter_dir.resolve()
    try:
        folder = (state.adapter_dir / path).resolve()
    except (OSError, ValueError):  # a NUL byte, a loop of links
        raise ApiError(400, "lora_path: not a usable path", "lora_path") from None
    if folder == root or not folder.is_relative_to(root):
        raise ApiError(400, "lora_path: must be an adapter folder inside the server's --adapter-dir", "lora_path")
    if not folder.is_dir():
        raise ApiError(404, "lora_path: no such adapter folder under the server's --adapter-dir", "lora_path")
    return folder


def _sampling(state: ServerState, body: ChatRequest | CompletionRequest, prompt: list[int]) -> Sampling:
    if len(prompt) > state.max_input_tokens:
        raise ApiError(400, f"the input is {len(prompt)} tokens; this server takes at most {state.max_input_tokens} "
                       "(--max-input-tokens)", "messages" if isinstance(body, ChatRequest) else "prompt",
                       "context_length_exceeded")  # fmt: skip
    if not prompt:
        raise ApiError(400, "the prompt is empty", "prompt")
    requested = getattr(body, "max_completion_tokens", None) or body.max_tokens
    if requested is not None and requested > state.max_new_tokens:
        raise ApiError(400, f"max_tokens is {requested}; this server generates at most {state.max_new_tokens} "
                       "(--max-new-tokens)", "max_tokens")  # fmt: skip
    return Sampling(requested or state.max_new_tokens, body.temperature, body.top_p, body.stops(), body.seed,
                    body.presence_penalty, body.frequency_penalty, body.top_logprobs_asked())  # fmt: skip


def _adapter_of(state: ServerState, model: str) -> str | None:
    if model == state.base_name:
        return None
    if model in state.adapters:
        return model
    known = ", ".join([state.base_name, *state.adapters])
    raise ApiError(404, f"the model {model!r} does not exist; this server has: {known}", "model", "model_not_found")


async def _grammar(state: ServerState, body: ChatRequest | CompletionRequest) -> Any:
    """The compiled grammar of ``response_format`` (None: free text), compiled off the event loop."""
    constrained, schema = body.constraint()
    if not constrained:
        return None
    try:
        return await asyncio.wait_for(asyncio.to_thread(state.grammars.compile, schema), COMPILE_TIMEOUT_S)
    except ValueError as err:
        raise ApiError(400, f"response_format.json_schema.schema: the schema cannot be enforced ({err})",
                       "response_format.json_schema.schema") from None  # fmt: skip
    except TimeoutError:
        raise ApiError(400, f"response_format: the schema's grammar took over {COMPILE_TIMEOUT_S:.0f} s to compile",
                       "response_format") from None  # fmt: skip


async def _events(
    state: ServerState, prompt: list[int], adapter: str | None, sampling: Sampling, n: int, grammar: Any
) -> AsyncIterator[tuple[int, Event]]:
    """(choice index, event) for the ``n`` choices of one request, generated side by side in the engine's batch
    (choice i samples with seed + i); leaving early (a client gone) cancels them."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    def emitter(index: int) -> Callable[[Event], None]:
        def emit(event: Event) -> None:  # runs on the engine thread
            with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown): nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, (index, event))

        return emit

    stop_ids = sorted(state.engine.eos_ids)
    requests = [
        EngineRequest(prompt, adapter, replace(sampling, seed=None if sampling.seed is None else sampling.seed + i),
                      emitter(i), matcher=None if grammar is None else matcher(grammar, stop_ids))
        for i in range(n)
    ]  # fmt: skip
    for request in requests:
        state.engine.submit(request)
    running = n
    try:
        while running:
            index, event = await queue.get()
            if event.error:
                raise ApiError(500, event.error)
            yield index, event
            running -= event.finish_reason is not None
    finally:
        for request in requests:
            request.cancelled = True  # a no-op once finished


async def _collect(events: AsyncIterator[tuple[int, Event]], n: int, logprobs: bool) -> list[Choice]:
    parts: list[list[str]] = [[] for _ in range(n)]
    tokens: list[list[Any]] = [[] for _ in range(n)]
    last: dict[int, Event] = {}
    async for index, event in events:
        parts[index].append(event.text)
        tokens[index].extend(event.logprobs)
        if event.finish_reason:
            last[index] = event
    return [Choice("".join(parts[i]), last[i], tokens[i] if logprobs else None) for i in range(n)]


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
    except ApiError as err:
        yield f"data: {json.dumps(err.body())}\n\n"
    yield "data: [DONE]\n\n"


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def create_app(state: ServerState) -> FastAPI:
    from lorakit.serve.page import add_page_routes

    app = FastAPI(title="lorakit serve", description="OpenAI-compatible endpoints for a base model and its LoRA "
                  "adapters, with vLLM's adapter loading; the playground page is at /.")  # fmt: skip
    # Added innermost first: CORS answers preflights before the key is checked; the key is checked before a body is
    # read; the body limit applies to whatever is read.
    app.add_middleware(BodyLimitMiddleware, limit=state.max_request_bytes)
    if state.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=state.api_key)
    if state.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(state.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return _error(err)

    @app.exception_handler(LorakitError)
    async def lorakit_error(_: Request, err: LorakitError) -> JSONResponse:
        return _error(ApiError(400, str(err)))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, err: RequestValidationError) -> JSONResponse:
        return _error(validation_error(err.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:  # 404 route, 405 method, 413 body
        return JSONResponse(ApiError(err.status_code, str(err.detail)).body(), status_code=err.status_code,
                            headers=err.headers)  # fmt: skip

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": state.base_name, "adapters": sorted(state.adapters)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        base = {"id": state.base_name, "object": "model", "created": 0, "owned_by": "lorakit", "root": state.base_name}
        adapters = [{"id": n, "object": "model", "created": 0, "owned_by": "lorakit", "root": state.base_name,
                     "parent": state.base_name} for n in state.adapters]  # fmt: skip
        return {"object": "list", "data": [base, *adapters]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest) -> JSONResponse | StreamingResponse:
        adapter = _adapter_of(state, body.model)
        try:
            with state.engine.tokenizer_lock:
                prompt = prompt_ids(state.engine.tokenizer, with_system_prompt(state, adapter, body.conversation()))
        except Exception as err:  # a chat template can reject a conversation (e.g. roles out of order)
            raise ApiError(400, f"messages: the chat template rejected them ({err})", "messages") from None
        sampling = _sampling(state, body, prompt)
        grammar = await _grammar(state, body)
        events = _events(state, prompt, adapter, sampling, body.n, grammar)
        rid = new_id("chatcmpl")
        if not body.stream:
            choices = await _collect(events, body.n, body.logprobs)
            return JSONResponse(chat_response(rid, body.model, len(prompt), choices, state.texts))

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            for i in range(body.n):
                yield chat_chunk(rid, body.model, i, {"role": "assistant", "content": ""}, None)
            finished: list[Choice] = []
            async for i, event in events:
                logprobs = chat_logprobs(event.logprobs, state.texts) if body.logprobs and event.logprobs else None
                if event.text or logprobs:
                    yield chat_chunk(rid, body.model, i, {"content": event.text}, None, logprobs)
                if event.finish_reason:
                    finished.append(Choice("", event, None))
                    yield chat_chunk(rid, body.model, i, {}, event.finish_reason)
            if body.stream_options and body.stream_options.include_usage:
                yield usage_chunk(rid, body.model, "chat.completion.chunk", len(prompt), finished)

        return StreamingResponse(_sse(chunks()), media_type="text/event-stream")

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> JSONResponse | StreamingResponse:
        adapter = _adapter_of(state, body.model)
        if isinstance(body.prompt, str) or isinstance(body.prompt[0], str):
            text_in = body.prompt if isinstance(body.prompt, str) else str(body.prompt[0])
            with state.engine.tokenizer_lock:
                prompt = list(state.engine.tokenizer(text_in)["input_ids"])
        else:
            prompt = [int(t) for t in body.prompt]
            vocab = len(state.engine.tokenizer)
            if any(t < 0 or t >= vocab for t in prompt):
                raise ApiError(400, f"prompt: token ids must be in [0, {vocab})", "prompt")
        sampling = _sampling(state, body, prompt)
        grammar = await _grammar(state, body)
        events = _events(state, prompt, adapter, sampling, body.n, grammar)
        rid = new_id("cmpl")
        if not body.stream:
            choices = await _collect(events, body.n, body.logprobs is not None)
            return JSONResponse(completion_response(rid, body.model, len(prompt), choices, state.texts))

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            finished: list[Choice] = []
            sent = [0] * body.n  # characters of each choice so far: the legacy logprobs' text_offset
            async for i, event in events:
                logprobs = None
                if body.logprobs is not None and event.logprobs:
                    logprobs = completion_logprobs(event.logprobs, state.texts, sent[i])
                sent[i] += len(event.text)
                if event.text or event.finish_reason or logprobs:
                    yield completion_chunk(rid, body.model, i, event.text, event.finish_reason, logprobs)
                if event.finish_reason:
                    finished.append(Choice("", event, None))
            if body.stream_options and body.stream_options.include_usage:
                yield usage_chunk(rid, body.model, "text_completion", len(prompt), finished)

        return StreamingResponse(_sse(chunks()), media_type="text/event-stream")

    @app.post("/v1/load_lora_adapter", response_class=PlainTextResponse)
    async def load_lora_adapter(body: LoadLoraAdapter) -> str:
        """vLLM's: load the adapter folder ``lora_path`` (inside ``--adapter-dir``) as the model ``lora_name``."""
        name = adapter_name(body.lora_name)
        folder = adapter_folder(state, body.lora_path)
        await asyncio.wrap_future(state.engine.call(lambda: state.load(name, folder)))
        return f"Success: LoRA adapter '{name}' added successfully."

    @app.post("/v1/unload_lora_adapter", response_class=PlainTextResponse)
    async def unload_lora_adapter(body: UnloadLoraAdapter) -> str:
        """vLLM's: unload the adapter ``lora_name`` (refused while requests for it are in flight)."""
        await asyncio.wrap_future(state.engine.call(lambda: state.unload(body.lora_name)))
        return f"Success: LoRA adapter '{body.lora_name}' removed successfully."

    add_page_routes(app, state)
    return app


def available_adapters(state: ServerState) -> list[str]:
    """Adapter folders under ``--adapter-dir`` that could be loaded by name."""
    folder = state.adapter_dir
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and ADAPTER_NAME.fullmatch(p.name))
