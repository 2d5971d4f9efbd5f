"""The HTTP routes (FastAPI): OpenAI's ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``, plus
``/health`` and adapter loading by name. All generation goes through the one ``Engine``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lorakit.adapters import adapter_configs, delete_adapter
from lorakit.errors import LorakitError
from lorakit.eval.generate import prompt_ids
from lorakit.io import load_adapter
from lorakit.methods.mixed import row_adapters
from lorakit.origin import check_same_base
from lorakit.serve.engine import Engine, Event, Sampling
from lorakit.serve.engine import Request as EngineRequest
from lorakit.serve.protocol import (
    AdapterRequest,
    ApiError,
    ChatRequest,
    CompletionRequest,
    chat_chunk,
    chat_response,
    completion_response,
    new_id,
    parse,
)

# An adapter name is one plain folder name: no separators, no "..", nothing a path could hide in.
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


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

    @property
    def model(self) -> Any:
        return self.engine.model

    def load(self, name: str, folder: Path) -> None:
        """Load an adapter (on the engine thread) and check that it can join mixed batches."""
        if name == self.base_name or name in adapter_configs(self.model):
            raise ApiError(409, f"an adapter or model named {name!r} is already loaded", "name")
        origin = check_same_base(folder, self.base_model)  # one line: an adapter of another base is refused
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
            raise ApiError(404, f"adapter {name!r} is not loaded", "name", "model_not_found")
        if self.engine.in_use(name):
            raise ApiError(409, f"adapter {name!r} has requests in flight; retry when they are done", "name")
        delete_adapter(self.model, name)
        del self.adapters[name]
        self.system_prompts.pop(name, None)


def with_system_prompt(state: ServerState, adapter: str | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation, opened with the adapter's training system prompt when the request sends none."""
    prompt = state.system_prompts.get(adapter) if adapter else None
    if prompt is None or any(m.get("role") == "system" for m in messages):
        return messages
    return [{"role": "system", "content": prompt}, *messages]


def _adapter_folder(state: ServerState, name: str) -> Path:
    if state.adapter_dir is None:
        raise ApiError(400, "this server was started without --adapter-dir, so it loads no adapters at run time")
    if not ADAPTER_NAME.fullmatch(name) or ".." in name:
        raise ApiError(400, "name must be an adapter folder name under --adapter-dir (letters, digits, . _ -)", "name")
    folder = state.adapter_dir / name
    if not folder.is_dir():
        raise ApiError(404, f"no adapter folder {name!r} under the server's --adapter-dir", "name")
    return folder


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON ({err})") from None


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
    return Sampling(requested or state.max_new_tokens, body.temperature, body.top_p, body.stops(), body.seed)


def _adapter_of(state: ServerState, model: str) -> str | None:
    if model == state.base_name:
        return None
    if model in state.adapters:
        return model
    known = ", ".join([state.base_name, *state.adapters])
    raise ApiError(404, f"the model {model!r} does not exist; this server has: {known}", "model", "model_not_found")


async def _events(
    state: ServerState, prompt: list[int], adapter: str | None, sampling: Sampling
) -> AsyncIterator[Event]:
    """The engine's events for one request; leaving early (a client gone) cancels it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(event: Event) -> None:  # runs on the engine thread
        with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown): nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, event)

    request = EngineRequest(prompt, adapter, sampling, emit)
    state.engine.submit(request)
    try:
        while True:
            event = await queue.get()
            if event.error:
                raise ApiError(500, event.error)
            yield event
            if event.finish_reason:
                return
    finally:
        request.cancelled = True  # a no-op once finished


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
    except ApiError as err:
        yield f"data: {json.dumps(err.body())}\n\n"
    yield "data: [DONE]\n\n"


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="lorakit serve")

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return _error(err)

    @app.exception_handler(LorakitError)
    async def lorakit_error(_: Request, err: LorakitError) -> JSONResponse:
        return _error(ApiError(400, str(err)))

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
    async def chat(request: Request) -> JSONResponse | StreamingResponse:
        body: ChatRequest = parse(ChatRequest, await _json(request))
        adapter = _adapter_of(state, body.model)
        try:
            with state.engine.tokenizer_lock:
                prompt = prompt_ids(state.engine.tokenizer, with_system_prompt(state, adapter, body.conversation()))
        except Exception as err:  # a chat template can reject a conversation (e.g. roles out of order)
            raise ApiError(400, f"messages: the chat template rejected them ({err})", "messages") from None
        sampling = _sampling(state, body, prompt)
        rid = new_id("chatcmpl")
        if body.stream:

            async def chunks() -> AsyncIterator[dict[str, Any]]:
                yield chat_chunk(rid, body.model, {"role": "assistant", "content": ""}, None)
                async for event in _events(state, prompt, adapter, sampling):
                    if event.text:
                        yield chat_chunk(rid, body.model, {"content": event.text}, None)
                    if event.finish_reason:
                        yield chat_chunk(rid, body.model, {}, event.finish_reason)

            return StreamingResponse(_sse(chunks()), media_type="text/event-stream")
        text, last = await _collect(_events(state, prompt, adapter, sampling))
        return JSONResponse(chat_response(rid, body.model, text, last))

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> JSONResponse | StreamingResponse:
        body: CompletionRequest = parse(CompletionRequest, await _json(request))
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
        rid = new_id("cmpl")
        if body.stream:

            async def chunks() -> AsyncIterator[dict[str, Any]]:
                async for event in _events(state, prompt, adapter, sampling):
                    if event.text or event.finish_reason:
                        yield completion_response(rid, body.model, event.text, None, event.finish_reason)

            return StreamingResponse(_sse(chunks()), media_type="text/event-stream")
        text, last = await _collect(_events(state, prompt, adapter, sampling))
        return JSONResponse(completion_response(rid, body.model, text, last, last.finish_reason))

    @app.get("/v1/adapters")
    async def list_adapters() -> dict[str, Any]:
        folder = state.adapter_dir
        available = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder and folder.is_dir() else []
        return {"loaded": sorted(state.adapters), "available": available}

    @app.post("/v1/adapters/load")
    async def load(request: Request) -> dict[str, Any]:
        body: AdapterRequest = parse(AdapterRequest, await _json(request))
        folder = _adapter_folder(state, body.name)
        await asyncio.wrap_future(state.engine.call(lambda: state.load(body.name, folder)))
        return {"loaded": body.name}

    @app.post("/v1/adapters/unload")
    async def unload(request: Request) -> dict[str, Any]:
        body: AdapterRequest = parse(AdapterRequest, await _json(request))
        await asyncio.wrap_future(state.engine.call(lambda: state.unload(body.name)))
        return {"unloaded": body.name}

    return app


async def _collect(events: AsyncIterator[Event]) -> tuple[str, Event]:
    parts: list[str] = []
    async for event in events:
        parts.append(event.text)
        if event.finish_reason:
            return "".join(parts), event
    raise ApiError(500, "generation ended without a result")
