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
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from lorakit.errors import LorakitError
from lorakit.eval.generate import prompt_ids
from lorakit.serve.engine import Event, Sampling
from lorakit.serve.engine import Request as EngineRequest
from lorakit.serve.grammar import matcher
from lorakit.serve.page import add_page_routes
from lorakit.serve.protocol import (
    ApiError,
    ChatRequest,
    Choice,
    CompletionRequest,
    LoadLoraAdapter,
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
from lorakit.serve.security import ApiKeyMiddleware, BodyLimitMiddleware
from lorakit.serve.state import ServerState, adapter_folder, adapter_name, with_system_prompt

COMPILE_TIMEOUT_S = 30.0  # a schema whose grammar takes longer is refused


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
    app = FastAPI(
        title="lorakit serve",
        description="OpenAI-compatible endpoints for a base model and its LoRA "
        "adapters, with vLLM's adapter loading; the playground page is at /.",
    )
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
        return JSONResponse(
            ApiError(err.status_code, str(err.detail)).body(), status_code=err.status_code, headers=err.headers
        )

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
