"""Continuous batching: one model, many adapters, requests joining and leaving between decode steps.

A single engine thread owns the model. Each turn of its loop it

1. takes new requests (and adapter load/unload calls) from its inbox,
2. prefills as many waiting prompts as free batch rows allow, in one left-padded forward, samples their first
   token and appends their KV cache rows to the running batch's cache (both left-padded to one length),
3. runs one decode step for every running row, each row with its own adapter (``lorakit.row_adapters``), and
4. drops finished or cancelled rows from the cache, then trims cache columns that are padding in every row.

Each row keeps its own position ids and attention-mask row, so a row's numbers do not depend on who else is in
the batch beyond floating-point summation order. Results go back through a callback (``Request.emit``) called on
the engine thread; the web layer hands them to its event loop.

Per row, before a token is chosen: OpenAI's presence/frequency penalties, then the row's grammar mask (a request
with ``response_format``; ``lorakit.serve.grammar``), then greedy choice or seeded sampling. Log-probabilities,
where asked, are those of the model's own distribution (the raw logits' log-softmax, before penalties, mask and
temperature), as vLLM reports them by default.
"""

from __future__ import annotations

import contextlib
import inspect
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from lorakit.adapters import adapter_configs, disable_adapters
from lorakit.errors import ModelError
from lorakit.methods.mixed import row_adapters
from lorakit.serve.grammar import mask_logits

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Sampling:
    """Per-request decoding settings (OpenAI's names); temperature 0 is greedy."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely tokens' log-probabilities


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the ``top`` most likely tokens at its position (id, logprob)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Event:
    """New text for one request; the last event has ``finish_reason`` (or ``error``) set."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the tokens generated since the last event


@dataclass(eq=False)
class Request:
    prompt: list[int]
    adapter: str | None
    sampling: Sampling
    emit: Callable[[Event], None]
    matcher: Any = None  # the grammar state of a constrained reply (``lorakit.serve.grammar.matcher``)
    generated: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet emitted
    emitted: int = 0  # characters of the decoded reply already sent
    cancelled: bool = False
    generator: torch.Generator = field(default_factory=torch.Generator)

    def __post_init__(self) -> None:
        if self.sampling.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.sampling.seed)


def _pad_left(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [missing, 0]  # F.pad lists dims from the last one backwards
    return F.pad(t, pad)


class Engine:
    """Runs generation for submitted requests on a background thread; see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        # Fast tokenizers may fail with "Already borrowed" when two threads use one at once: the web layer encodes
        # prompts while this thread decodes replies, so both hold this lock around tokenizer calls.
        self.tokenizer_lock = threading.Lock()
        eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_positions: int | None = getattr(model.config, "max_position_embeddings", None)
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
        self._inbox: queue.SimpleQueue[Request | tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._cache: Any = None  # the running rows' DynamicCache, (B, heads, L, head_dim) per layer
        self.device = next(model.parameters()).device
        self._mask = torch.zeros(
            0, 0, dtype=torch.long, device=self.device
        )  # (B, L): 1 where the cache holds a real token
        self._positions = torch.zeros(
            0, dtype=torch.long, device=self.device
        )  # (B,): position id of each row's next token
        self._last = torch.zeros(
            0, dtype=torch.long, device=self.device
        )  # (B,): each row's latest token, the next step's input
        self.steps = 0
        self.generated_tokens = 0
        self._thread = threading.Thread(target=self._loop, name="lorakit-engine", daemon=True)
        self._thread.start()

    # --- called from other threads ---------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        self._inbox.put(request)

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the engine thread between two steps (adapter loading must not race a forward)."""
        future: Future[Any] = Future()
        self._inbox.put((fn, future))
        return future

    def load(self) -> dict[str, int]:
        """Rows decoding now, requests waiting for a row, decode steps and tokens generated so far (read from any
        thread: a snapshot, not a transaction)."""
        waiting = len(self._waiting) + self._inbox.qsize()
        return {"running": len(self._running), "waiting": waiting, "max_batch": self.max_batch, "steps": self.steps,
                "generated_tokens": self.generated_tokens}  # fmt: skip

    def in_use(self, adapter: str) -> bool:
        """Whether a waiting or running request uses ``adapter`` (call on the engine thread)."""
        return any(r.adapter == adapter for r in (*self._waiting, *self._running))

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30)

    # --- the engine thread --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.no_grad():
            while True:
                if not self._take_inbox(block=not (self._running or self._waiting)):
                    return
                self._drop([r for r in self._running if r.cancelled])
                self._waiting = deque(r for r in self._waiting if not r.cancelled)
                admit = [
                    self._waiting.popleft() for _ in range(min(len(self._waiting), self.max_batch - len(self._running)))
                ]
                try:
                    if admit:
                        self._prefill(admit)
                    if self._running:
                        self._decode()
                except Exception as err:  # a failed step fails its requests, never the server
                    for request in dict.fromkeys([*admit, *self._running]):
                        request.emit(Event("", error=f"generation failed: {type(err).__name__}: {err}"))
                    self._running, self._cache = [], None
                    self._mask, self._positions, self._last = self._mask[:0, :0], self._positions[:0], self._last[:0]

    def _take_inbox(self, block: bool) -> bool:
        """Move new requests to the waiting queue and run pending calls; False once closed."""
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if item is None:
                return False
            if isinstance(item, Request):
                self._waiting.append(item)
                continue
            fn, future = item
            try:
                future.set_result(fn())
            except Exception as err:
                future.set_exception(err)

    def _adapters(self, rows: list[str | None]) -> contextlib.AbstractContextManager[Any]:
        if not adapter_configs(self.model):
            return contextlib.nullcontext()
        if all(r is None for r in rows):
            return disable_adapters(self.model)
        return row_adapters(self.model, rows)

    def _forward(self, rows: list[str | None], **inputs: Any) -> tuple[torch.Tensor, Any]:
        """Logits at the last position (B, vocab) and the updated cache."""
        with self._adapters(rows):
            out = self.model(**inputs, use_cache=True, logits_to_keep=1)
        cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
        return out.logits[:, -1].float(), cache

    def _prefill(self, admit: list[Request]) -> None:
        width = max(len(r.prompt) for r in admit)
        ids = torch.full((len(admit), width), self.pad_id, dtype=torch.long)  # (B, T), prompts left-padded
        mask = torch.zeros((len(admit), width), dtype=torch.long)  # (B, T)
        for i, request in enumerate(admit):
            ids[i, width - len(request.prompt) :] = torch.tensor(request.prompt)
            mask[i, width - len(request.prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): padding does not advance a row's positions
        kwargs = {self._cache_kwarg: None}
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        logits, cache = self._forward(
            [r.adapter for r in admit], input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs
        )
        self._join(cache, mask, mask.sum(-1), admit)
        self._running.extend(admit)
        self._accept(admit, logits, rows=range(len(self._running) - len(admit), len(self._running)))

    def _join(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor, admit: list[Request]) -> None:
        """Append the new rows' cache to the running batch's, both left-padded to the longer length."""
        for layer in cache.layers:
            if type(layer).__name__ != "DynamicLayer":
                raise ModelError(f"lorakit serve batches full-attention KV caches only, not {type(layer).__name__}")
        if self._cache is None:
            self._cache, self._mask = cache, mask
        else:
            length = max(self._mask.shape[1], mask.shape[1])
            for old, new in zip(self._cache.layers, cache.layers, strict=True):
                old.keys = torch.cat([_pad_left(old.keys, length, 2), _pad_left(new.keys, length, 2)])
                old.values = torch.cat([_pad_left(old.values, length, 2), _pad_left(new.values, length, 2)])
            self._mask = torch.cat([_pad_left(self._mask, length, 1), _pad_left(mask, length, 1)])  # (B, L)
        self._positions = torch.cat([self._positions, positions])
        self._last = torch.cat([self._last, torch.zeros(len(admit), dtype=torch.long, device=self.device)])

    def _decode(self) -> None:
        rows = len(self._running)
        self._mask = torch.cat(
            [self._mask, torch.ones(rows, 1, dtype=torch.long, device=self.device)], dim=1
        )  # (B, L + 1)
        inputs = {"input_ids": self._last[:, None], "attention_mask": self._mask,
                  "position_ids": self._positions[:, None], self._cache_kwarg: self._cache}  # fmt: skip
        logits, _ = self._forward([r.adapter for r in self._running], **inputs)
        self._positions = self._positions + 1
        self.steps += 1
        self._accept(self._running, logits, rows=range(rows))

    def _accept(self, requests: list[Request], logits: torch.Tensor, rows: range) -> None:
        """Choose one token per request (row ``rows[i]`` of the batch, ``logits[i]``), emit text, drop the finished."""
        asked = [r.sampling.logprobs for r in requests]
        raw = torch.log_softmax(logits, -1) if any(k is not None for k in asked) else None  # (B, vocab)
        for i, request in enumerate(requests):
            self._penalise(logits[i], request)
        mask_logits(logits, [r.matcher for r in requests])
        greedy = logits.argmax(-1).tolist()  # (B,)
        finished = []
        for i, (request, row) in enumerate(zip(requests, rows, strict=True)):
            s = request.sampling
            token = greedy[i] if s.temperature == 0 else self._sample(logits[i], s, request.generator)
            self._last[row] = token
            if raw is not None and asked[i] is not None and token not in self.eos_ids:
                request.logprobs.append(_logprob(raw[i], token, asked[i] or 0))
            if request.matcher is not None and not request.matcher.accept_token(token):
                request.emit(Event("", error=f"generation failed: the grammar refused token {token}"))
                finished.append(request)
            elif self._advance(request, token, int(self._positions[row])):
                finished.append(request)
        self.generated_tokens += len(requests)
        self._drop(finished)

    @staticmethod
    def _penalise(logits: torch.Tensor, request: Request) -> None:
        """OpenAI's penalties, in place on one row (vocab,): minus ``frequency * count + presence * (count > 0)``
        for each token generated so far."""
        s = request.sampling
        if not request.generated or (s.presence_penalty == 0 and s.frequency_penalty == 0):
            return
        ids = torch.tensor(request.generated, device=logits.device)
        counts = torch.bincount(ids, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)  # (vocab,)
        logits -= s.frequency_penalty * counts + s.presence_penalty * (counts > 0).to(logits.dtype)

    @staticmethod
    def _sample(logits: torch.Tensor, s: Sampling, generator: torch.Generator) -> int:
        probs = torch.softmax(logits.cpu() / s.temperature, dim=-1)  # (vocab,); on the CPU, as the generator is
        if s.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > s.top_p  # keep the smallest set reaching top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(outside, 0.0))
        return int(torch.multinomial(probs, 1, generator=generator))

    def _advance(self, request: Request, token: int, position: int) -> bool:
        """Record ``token``; emit the text that is final so far; True when the request is done."""
        s = request.sampling
        reason: FinishReason | None = None
        if token in self.eos_ids:
            reason = "stop"
        else:
            request.generated.append(token)
        with self.tokenizer_lock:
            text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        cut = min((i for i in (text.find(stop) for stop in s.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        elif reason is None and (
            len(request.generated) >= s.max_tokens or (self.max_positions and position + 1 >= self.max_positions)
        ):
            reason = "length"
        if reason is None:
            # Hold back an incomplete UTF-8 character and any tail that may be the start of a stop string.
            safe = len(text.rstrip("\ufffd"))
            for stop in s.stop:
                for k in range(min(len(stop) - 1, safe), 0, -1):
                    if text[:safe].endswith(stop[:k]):
                        safe = min(safe, len(text[:safe]) - k)
                        break
            if safe > request.emitted:
                request.emit(Event(text[request.emitted : safe], logprobs=request.logprobs))
                request.emitted, request.logprobs = safe, []
            return False
        request.emit(Event(text[request.emitted :], reason, len(request.prompt), len(request.generated),
                           logprobs=request.logprobs))  # fmt: skip
        request.emitted, request.logprobs = len(text), []
        return True

    def _drop(self, done: list[Request]) -> None:
        if not done:
            return
        keep = [i for i, r in enumerate(self._running) if r not in done]
        self._running = [self._running[i] for i in keep]
        if not keep:
            self._cache = None
            self._mask, self._positions, self._last = self._mask[:0, :0], self._positions[:0], self._last[:0]
            return
        index = torch.tensor(keep, device=self.device)
        self._mask, self._positions, self._last = self._mask[index], self._positions[index], self._last[index]
        start = int(self._mask.any(0).long().argmax())  # columns before it are padding in every remaining row
        self._mask = self._mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]


def _logprob(logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """``token``'s entry from one row of log-probabilities (vocab,), with the ``top`` most likely tokens."""
    best = logprobs.topk(top) if top else None
    pairs = tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best is not None else ()
    return TokenLogprob(token, float(logprobs[token]), pairs)
