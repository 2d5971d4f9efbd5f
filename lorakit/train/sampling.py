"""Completions sampled from the model being trained, and the batch that trains on them.

``Trainer.sample`` draws them through lorakit's own decoding loop (``lorakit.eval.generate.decode_ids``: KV cache,
each prompt run once for its n samples, finished rows leaving the batch) in the process that trains, from the live
adapter: no second inference engine, no weights to push into one, nothing merged and unmerged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lorakit.data.tokenize import IGNORE_INDEX, completion_prompt, render_prompt

Prompt = str | Sequence[Mapping[str, Any]] | Sequence[int]
"""A prompt: text (tokenized as a completion record's prompt is, ``[bos] text``), a conversation (rendered with the
chat template up to the assistant's turn) or token ids."""


@dataclass(frozen=True)
class Completion:
    """One sampled completion of ``prompts[prompt]``."""

    prompt: int
    """Index of its prompt in the list ``sample`` was given."""
    prompt_ids: list[int]
    ids: list[int]
    """The completion's tokens, the stop token (eos) included when it stopped."""
    log_probs: list[float]
    """log p(token | everything before it) of each of ``ids`` under the model's distribution (temperature 1, no
    top-p), as a forward pass over prompt + completion gives them (``Trainer.forward_backward``'s)."""
    text: str
    """The completion decoded, special tokens left out."""
    stopped: bool
    """It ended with the stop token (False: cut at ``max_new_tokens``)."""


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """The token ids ``prompt`` (see ``Prompt``) is sampled from."""
    if isinstance(prompt, str):
        return completion_prompt(tokenizer, prompt)
    items = list(prompt)
    if items and all(isinstance(m, Mapping) for m in items):
        return render_prompt(tokenizer, items)  # type: ignore[arg-type]
    if items and all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        return [int(t) for t in items]  # type: ignore[call-overload]
    raise ValueError("a prompt is a string, a list of messages or a list of token ids, got " + repr(prompt)[:80])


def completions(
    tokenizer: Any, prompts: list[list[int]], n: int, replies: list[list[int]], scores: list[list[float]],
    stop_id: int | None,
) -> list[Completion]:  # fmt: skip
    """``decode_ids``' rows as ``Completion``s (row i * n + k is prompt i's k-th)."""
    out = []
    for row, (ids, lps) in enumerate(zip(replies, scores, strict=True)):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        out.append(Completion(row // n, prompts[row // n], ids, lps, text, bool(ids) and ids[-1] == stop_id))
    return out


def completion_batch(samples: Sequence[Completion], pad_id: int) -> dict[str, torch.Tensor]:
    """Prompt + completion rows, right-padded, for ``Trainer.forward_backward``: ``input_ids``, ``attention_mask``,
    ``labels`` (the completion's tokens, -100 elsewhere) and ``old_log_probs`` (each completion token's
    ``Completion.log_probs`` at its position, 0 elsewhere), all (B, T) and aligned with each other and with the
    log-probabilities a callable loss gets."""
    width = max(len(s.prompt_ids) + len(s.ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    old = torch.zeros((len(samples), width), dtype=torch.float32)
    for i, s in enumerate(samples):
        p, c = len(s.prompt_ids), len(s.ids)
        ids[i, : p + c] = torch.tensor(s.prompt_ids + s.ids)
        mask[i, : p + c] = 1
        labels[i, p : p + c] = torch.tensor(s.ids)
        old[i, p : p + c] = torch.tensor(s.log_probs, dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "old_log_probs": old}
