"""Turning checked records into token ids and labels, with the loss only on what the model should say.

Three shapes (``lorakit.data.formats``): chat records through the chat template, the loss on assistant messages
whose ``weight`` is not 0; completion records as ``[bos] prompt completion eos``, the loss on ``completion eos``;
text records as ``[bos] text eos``, the loss on every token.

Chat records go through the tokenizer's own chat template, so training sees exactly the text that
:func:`render_prompt` produces at generation time (including any default system prompt the template
inserts).  To find which tokens are the assistant's, the template is rendered on prefixes of the
conversation: ``messages[:i]`` with the generation prompt ends where assistant message ``i`` starts, and
``messages[:i + 1]`` ends where its turn ends.  Every such prefix must be a prefix of the full rendering;
templates that render earlier turns differently depending on what follows are rejected with a clear error
rather than guessed at.

The rendered text is cut at those boundaries and each piece is tokenized on its own.  Labels then follow
piece boundaries exactly (no token straddles "prompt" and "answer"), and the answer tokens are the ones
the model produces when generation starts right after the prompt.  For ordinary text this equals
tokenizing the whole rendering (the tests check it for the built-in model).

The tokenizer is duck-typed (a ``transformers`` tokenizer in practice): this module uses
``apply_chat_template(..., tokenize=False)``, ``__call__(text, add_special_tokens=...)`` and the
special-token attributes, and never imports transformers itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.errors import DataError, LorakitError

IGNORE_INDEX = -100  # label value that torch's cross-entropy skips

Tokenizer = Any  # a transformers PreTrainedTokenizer(Fast) or anything with the same methods


@dataclass(frozen=True)
class TokenizedExample:
    """One training sequence; ``labels[i]`` is ``input_ids[i]`` where it counts for the loss, else -100."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class TokenizeStats:
    """What happened to a dataset: ``n_truncated`` counts kept-but-cut examples, ``n_skipped`` dropped ones.

    ``n_tokens`` and ``n_label_tokens`` are totals over the kept (possibly truncated) examples.
    """

    n_records: int
    n_truncated: int
    n_skipped: int
    n_tokens: int
    n_label_tokens: int


def tokenize_example(tokenizer: Tokenizer, record: dict, seq_len: int) -> tuple[TokenizedExample | None, bool]:
    """Tokenize one checked record (``lorakit.data.formats``) and fit it into ``seq_len``.

    Returns ``(example, truncated)``.  Overlong examples keep their first ``seq_len`` tokens (the start of
    a conversation gives the context the answer depends on); when that leaves no labelled token the
    example is useless and ``(None, True)`` is returned so the caller can count it as skipped.
    """
    return _fit(_tokenize_full(tokenizer, record), seq_len)


def tokenize_dataset(
    tokenizer: Tokenizer,
    records: Sequence[dict],
    seq_len: int,
    path: str | Path | None = None,
) -> tuple[list[TokenizedExample], TokenizeStats]:
    """Tokenize every record; ``path`` (the dataset file) only makes error messages point somewhere.

    Raises a :class:`LorakitError` (a :class:`DataError` when ``path`` is given) when a chat template
    cannot be applied to a record, or when every example had to be skipped for being too long.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    examples: list[TokenizedExample] = []
    n_truncated = n_skipped = n_tokens = n_label_tokens = 0
    longest = 0
    for number, record in enumerate(records, start=1):
        try:
            full = _tokenize_full(tokenizer, record)
        except LorakitError as exc:
            message = f"record {number}: {exc}"
            raise (DataError(str(path), message) if path is not None else LorakitError(message)) from exc
        longest = max(longest, len(full.input_ids))
        example, truncated = _fit(full, seq_len)
        if example is None:
            n_skipped += 1
            continue
        n_truncated += int(truncated)
        n_tokens += len(example.input_ids)
        n_label_tokens += example.n_label_tokens
        examples.append(example)

    if records and not examples:
        message = (
            f"all {len(records)} examples are longer than --seq-len {seq_len} (no trainable token is left "
            f"after truncation); the longest is {longest} tokens, try --seq-len {longest}"
        )
        raise DataError(str(path), message) if path is not None else LorakitError(message)
    stats = TokenizeStats(
        n_records=len(records),
        n_truncated=n_truncated,
        n_skipped=n_skipped,
        n_tokens=n_tokens,
        n_label_tokens=n_label_tokens,
    )
    return examples, stats


def render_prompt(tokenizer: Tokenizer, messages: Sequence[dict]) -> list[int]:
    """Ids of ``messages`` followed by the assistant generation prompt, ready for ``generate``.

    ``messages`` is the conversation without the reply to be generated.  Tokenized without extra special
    tokens because the template already writes them (as in training).
    """
    return _encode(tokenizer, _render(tokenizer, messages, add_generation_prompt=True))


# --------------------------------------------------------------------------------------------- internals


def _fit(full: TokenizedExample, seq_len: int) -> tuple[TokenizedExample | None, bool]:
    if len(full.input_ids) <= seq_len:
        return full, False
    cut = TokenizedExample(input_ids=full.input_ids[:seq_len], labels=full.labels[:seq_len])
    if cut.n_label_tokens == 0:
        return None, True
    return cut, True


def _tokenize_full(tokenizer: Tokenizer, record: dict) -> TokenizedExample:
    """Tokenize a record without any length limit."""
    if "chosen" in record:
        raise LorakitError("preference records ('chosen'/'rejected') train with DPO (TrainConfig(objective='dpo'), "
                           "lorakit.train.preference), not with the next-token loss")  # fmt: skip
    if "messages" in record:
        return _tokenize_chat(tokenizer, record["messages"], record.get("tools"))
    if "prompt" in record:
        return _tokenize_completion(tokenizer, record["prompt"], record["completion"])
    if "text" in record:
        return _tokenize_text(tokenizer, record["text"])
    raise LorakitError("record has neither 'messages', 'prompt' nor 'text' (was it read with read_data?)")


def _tokenize_text(tokenizer: Tokenizer, text: str) -> TokenizedExample:
    """``[bos] text eos`` with the loss on every token but bos (language modelling on plain text)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise LorakitError("the tokenizer has no eos token, so the model could not learn where a text ends")
    prefix = _bos_prefix(tokenizer)
    ids = [*_encode(tokenizer, text), eos]
    return TokenizedExample(input_ids=prefix + ids, labels=[IGNORE_INDEX] * len(prefix) + ids)


def completion_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Ids a completion record's prompt is trained with (``[bos] prompt``): where generation starts."""
    return _bos_prefix(tokenizer) + _encode(tokenizer, prompt)


def _tokenize_completion(tokenizer: Tokenizer, prompt: str, completion: str) -> TokenizedExample:
    """``[bos] prompt completion eos`` with the loss on ``completion eos``; no chat template involved.

    Prompt and completion are tokenized separately so the completion tokens are the ones a model
    produces when generating right after the prompt.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise LorakitError("the tokenizer has no eos token, so the model could not learn where to stop")
    prefix = _bos_prefix(tokenizer)
    prompt_ids = _encode(tokenizer, prompt)
    completion_ids = [*_encode(tokenizer, completion), eos]
    return TokenizedExample(
        input_ids=prefix + prompt_ids + completion_ids,
        labels=[IGNORE_INDEX] * (len(prefix) + len(prompt_ids)) + completion_ids,
    )


def _bos_prefix(tokenizer: Tokenizer) -> list[int]:
    """``[bos]`` if the tokenizer itself puts a bos in front of text, else ``[]``.

    Probed by tokenizing with and without special tokens rather than read from a flag, because whether a
    tokenizer adds bos is configured in different places (``add_bos_token``, a post-processor...).
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    with_specials = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if with_specials and with_specials[0] == bos and (not without or without[0] != bos):
        return [bos]
    return []


def _tokenize_chat(tokenizer: Tokenizer, messages: Sequence[dict], tools: list | None = None) -> TokenizedExample:
    """Render ``messages`` with the chat template; label each assistant content plus its end-of-turn.

    An assistant message with ``weight`` 0 is context, like a user message. An assistant message with tool calls is
    labelled whole, as the template renders it (its calls and any text), through the turn's last special token.
    """
    _check_tool_support(tokenizer, messages, tools)
    full = _render(tokenizer, messages, add_generation_prompt=False, tools=tools)
    special = _special_ids(tokenizer)
    ids: list[int] = []
    labels: list[int] = []

    def add(text: str, labelled: bool) -> None:
        piece = _encode(tokenizer, text)
        ids.extend(piece)
        labels.extend(piece if labelled else [IGNORE_INDEX] * len(piece))

    done = 0  # characters of ``full`` already tokenized
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight") == 0:
            continue
        if i == 0:
            # Nothing to render "up to the generation prompt", so the reply's start cannot be found.
            raise LorakitError("the conversation starts with an assistant message; put a user message first")
        start = _prefix_length(tokenizer, messages[:i], True, full, i, tools)
        end = _prefix_length(tokenizer, messages[: i + 1], False, full, i, tools)
        if not done <= start <= end:
            raise _inconsistent(i, "turn boundaries are out of order")
        if message.get("tool_calls"):
            add(full[done:start], labelled=False)
            turn = _encode(tokenizer, full[start:end])
            stop = max((k for k, token in enumerate(turn) if token in special), default=None)
            if stop is None:
                raise LorakitError(f"the chat template renders the tool calls of message {i} with no end-of-turn token")
            ids.extend(turn)
            labels.extend(turn[: stop + 1] + [IGNORE_INDEX] * (len(turn) - stop - 1))
            done = end
            continue
        content_start, content_end = _locate_content(full, start, end, message["content"], i)
        add(full[done:content_start], labelled=False)  # earlier turns and this turn's role header
        add(full[content_start:content_end], labelled=True)

        # End of turn: the template's text between the content and the next turn.  Its tokens up to and
        # including the first special token (``<|im_end|>``, ``</s>``, ``<|eot_id|>``...) are labelled so
        # the model learns to stop; whatever follows (ChatML's newline) belongs to the next turn's layout.
        tail = _encode(tokenizer, full[content_end:end])
        stop = next((k for k, token in enumerate(tail) if token in special), None)
        if stop is None:
            raise LorakitError(
                f"the chat template ends assistant message {i} with {full[content_end:end]!r}, which has no "
                "end-of-turn/eos token, so the model could not learn where to stop"
            )
        ids.extend(tail)
        labels.extend(tail[: stop + 1] + [IGNORE_INDEX] * (len(tail) - stop - 1))
        done = end
    add(full[done:], labelled=False)
    return TokenizedExample(input_ids=ids, labels=labels)


def _check_tool_support(tokenizer: Tokenizer, messages: Sequence[dict], tools: list | None) -> None:
    """Tool calls and tool results need a template that renders them; most others drop them without a word."""
    uses_calls = any(m.get("tool_calls") for m in messages)
    if not (uses_calls or tools or any(m["role"] == "tool" for m in messages)):
        return
    template = getattr(tokenizer, "chat_template", None) or ""
    source = template if isinstance(template, str) else " ".join(map(str, dict(template).values()))
    if "tool_calls" not in source or (tools and "tools" not in source.replace("tool_calls", "")):
        what = "tool calls" if uses_calls else "tool definitions" if tools else "tool results"
        raise LorakitError(
            f"has {what}, but this tokenizer's chat template does not render tools (it never mentions "
            "'tool_calls'), so they would be dropped from the text; use a model whose template supports tools"
        )


def _prefix_length(
    tokenizer: Tokenizer, prefix: Sequence[dict], add_generation_prompt: bool, full: str, index: int,
    tools: list | None = None,
) -> int:  # fmt: skip
    """Length of the rendered ``prefix``, which must be a prefix of the full rendering ``full``."""
    text = _render(tokenizer, prefix, add_generation_prompt=add_generation_prompt, tools=tools)
    if not full.startswith(text):
        what = "with the generation prompt" if add_generation_prompt else "through that message"
        raise _inconsistent(index, f"the conversation rendered {what} is not a prefix of the whole rendering")
    return len(text)


def _locate_content(full: str, start: int, end: int, content: str, index: int) -> tuple[int, int]:
    """Character span of an assistant message's content inside its turn ``full[start:end]``.

    Normally the content starts the turn verbatim; some templates strip it, so a stripped match anywhere
    in the turn is accepted too (text the template puts before it stays unlabelled).
    """
    turn = full[start:end]
    if turn.startswith(content):
        return start, start + len(content)
    stripped = content.strip()
    offset = turn.find(stripped)
    if offset < 0:
        raise _inconsistent(index, "the assistant content does not appear in its rendered turn")
    return start + offset, start + offset + len(stripped)


def _inconsistent(index: int, detail: str) -> LorakitError:
    return LorakitError(
        f"the chat template does not render prefixes of the conversation consistently at message {index} "
        f"({detail}), so lorakit cannot tell which tokens are the assistant's"
    )


def _render(
    tokenizer: Tokenizer, messages: Sequence[dict], add_generation_prompt: bool, tools: list | None = None
) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise LorakitError("the tokenizer has no chat template; use prompt/completion or text records instead")
    # ``weight`` is lorakit's (which turns are trained on), not the template's
    plain = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    extra = {"tools": tools} if tools else {}
    try:
        text = tokenizer.apply_chat_template(
            plain, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
        )
    except Exception as exc:  # jinja errors, raise_exception() in templates (e.g. roles must alternate)
        raise LorakitError(f"the chat template failed on this conversation: {exc}") from exc
    if not isinstance(text, str):
        raise LorakitError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not text")
    return text


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids of ``text`` with no special tokens added (templates and callers write their own)."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _special_ids(tokenizer: Tokenizer) -> set[int]:
    """Every special-token id: eos, the registered specials and added tokens marked special."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", None) or []}
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.add(int(eos))
    return ids
