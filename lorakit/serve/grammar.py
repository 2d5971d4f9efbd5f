"""Constrained decoding for ``response_format``: a JSON schema (or "any JSON object") compiled to a grammar over
the tokenizer's vocabulary, and per-row token masks applied to a batch's logits.

The backend is xgrammar (looked up on first use, like the other optional backends). Each constrained request owns
one ``GrammarMatcher``; at each step the engine fills a ``(B, ceil(V / 32))`` int32 bitmask for its constrained,
still-running rows only and applies it to their logits, so rows with different schemas, and rows without one,
share every forward. A matcher that has terminated must not be asked for a mask (xgrammar raises): a row leaves the
batch as soon as it samples a stop token, which is also the only token its grammar then allows.

The grammar guarantees the shape of the reply, not its facts, and only within ``max_tokens``: a reply cut by the
length limit is a JSON prefix (``finish_reason: "length"``), as with OpenAI's API.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from lorakit.errors import LorakitError

# Runs of whitespace the grammar allows between JSON tokens: enough for indented output, while a small model
# cannot loop on blanks until max_tokens (a known failure of unbounded whitespace).
MAX_WHITESPACE = 8


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as err:
        raise LorakitError(f"response_format needs xgrammar: pip install 'lorakit[structured]' ({err})") from None
    return xgrammar


class Grammars:
    """Compiles ``response_format`` grammars for one tokenizer (the compiler is built on first use: ~0.2-0.7 s for a
    49k vocabulary; xgrammar caches compiled grammars by schema text)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._compiler: Any = None
        self._lock = threading.Lock()  # compilation runs on the web layer's worker threads

    def compiler(self) -> Any:
        with self._lock:
            if self._compiler is None:
                xgr = _xgrammar()
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size)
                self._compiler = xgr.GrammarCompiler(info, max_threads=1)
            return self._compiler

    def compile(self, schema: dict[str, Any] | None) -> Any:
        """The compiled grammar of a JSON schema; None: any JSON object (``json_object``). ValueError when the
        backend rejects the schema."""
        # Key order is kept: the grammar writes an object's properties in the order the schema lists them.
        text = json.dumps({"type": "object"} if schema is None else schema)
        compiler = self.compiler()
        try:
            return compiler.compile_json_schema(text, any_whitespace=True, max_whitespace_cnt=MAX_WHITESPACE)
        except (RuntimeError, ValueError, TypeError) as err:
            raise ValueError(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) from None


def matcher(grammar: Any, stop_ids: list[int]) -> Any:
    """A fresh matcher (the state of one reply) for a compiled grammar, ending on the engine's own stop tokens (the
    tokenizer's guess may add others, which the engine would emit as text)."""
    return _xgrammar().GrammarMatcher(grammar, override_stop_tokens=stop_ids)


def mask_logits(logits: torch.Tensor, matchers: list[Any | None]) -> None:
    """Set to -inf, in place, every token the grammar of row i forbids; rows whose matcher is None are untouched.
    ``logits``: (B, V) float32 on any device."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    xgr = _xgrammar()
    bitmask = xgr.allocate_token_bitmask(len(matchers), logits.shape[-1])  # (B, ceil(V / 32)) int32, all allowed
    for i, row_matcher in enumerate(matchers):
        if row_matcher is not None:
            row_matcher.fill_next_token_bitmask(bitmask, i)
    if logits.device.type == "cpu":
        xgr.apply_token_bitmask_inplace(logits, bitmask, indices=rows)
    else:
        xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device, non_blocking=True), indices=rows)
