"""Batched generation for evaluation and the CLI: left padding, KV cache, greedy or sampled.

Greedy decoding runs lorakit's own loop (``greedy_ids``) rather than transformers' ``generate``, for two savings
that evaluation data offers: the prompt prefix every row of a batch shares (a chat template's system prompt) is run
once and its KV cache copied to the rows, and a row that has stopped leaves the batch instead of being decoded to
the batch's longest reply (what that saves: ``bench.generate_speed``, docs/benchmarks.md); in bf16 the prefix's
separate run changes the rounding, and with it a few replies. The same loop samples (``decode_ids`` with
``sampler``: temperature, top-p, a generator of the caller's; n samples of a prompt share its prefill) and records
each token's log-probability, for ``lorakit.Trainer.sample``. ``generate_batch``'s sampling
goes through ``generate``, and so does a model that does not decode with transformers' ``DynamicCache`` or whose
``generation_config`` changes greedy decoding (``GREEDY_SETTINGS``: a repetition penalty, banned words...).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from tqdm import tqdm

from lorakit.data.tokenize import render_prompt


def prompt_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a conversation up to the assistant's turn (the reply, if present, is left out)."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return render_prompt(tokenizer, messages)


def _left_pad(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> list[str]:
    """Replies to ``prompts`` (token ids), decoded without special tokens; stops at end-of-turn."""
    if temperature <= 0 and _dynamic_cache_model(model) and _plain_greedy(model):
        rows = greedy_ids(model, prompts, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
        return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in _left_pad(prompts, tokenizer.pad_token_id).items()}
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, top_k=None, **sampling,
        )  # fmt: skip
    new = out[:, inputs["input_ids"].shape[1] :]  # (B, new tokens)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in new]


def _dynamic_cache_model(model: Any) -> bool:
    """A transformers model that decodes with a ``DynamicCache`` (not a recurrent or custom cache)."""
    check = getattr(model, "_supports_default_dynamic_cache", None)
    return bool(check()) if callable(check) else False


# generation_config settings that change greedy decoding in transformers' generate; greedy_ids applies none of them
GREEDY_SETTINGS = (
    "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens",
    "begin_suppress_tokens", "min_length", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id",
    "sequence_bias", "exponential_decay_length_penalty",
)  # fmt: skip


def _plain_greedy(model: Any) -> bool:
    """The model's generation_config leaves greedy decoding alone (a repetition penalty, say, would not)."""
    from transformers import GenerationConfig

    config, default = getattr(model, "generation_config", None), GenerationConfig()
    return config is None or all(getattr(config, k, None) == getattr(default, k, None) for k in GREEDY_SETTINGS)


def shared_prefix(prompts: list[list[int]]) -> int:
    """How many leading tokens every prompt shares, leaving each at least one token of its own (none for one)."""
    if len(prompts) < 2:
        return 0
    n = 0
    first = prompts[0]
    while n < min(len(p) for p in prompts) - 1 and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def greedy_ids(
    model: Any, prompts: list[list[int]], max_new_tokens: int, stop_id: int | None, pad_id: int | None
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (token ids), each up to and including ``stop_id`` or ``max_new_tokens``
    long: what transformers' ``generate(do_sample=False)`` gives with left padding, computed with a shared prefix
    run once and finished rows dropped (see the module docstring). A transformers causal LM."""
    return decode_ids(model, prompts, max_new_tokens, stop_id, pad_id)[0]


Pick = Callable[[torch.Tensor], torch.Tensor]
"""Chooses the next token of each row from its logits (B, V) -> (B,)."""


def sampler(temperature: float, top_p: float, generator: torch.Generator | None) -> Pick:
    """Draw from ``softmax(logits / temperature)`` restricted to its top-p nucleus (the fewest most likely tokens
    whose probability reaches ``top_p``, at least one), with ``generator``'s random numbers; temperature 0: greedy.
    """

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if temperature <= 0:
            return logits.argmax(-1)
        z = logits.float() / temperature  # (B, V)
        if top_p < 1:
            ordered, order = z.sort(dim=-1, descending=True)  # (B, V)
            probs = ordered.softmax(-1)
            outside = probs.cumsum(-1) - probs >= top_p  # the mass before a token already reaches top_p
            z = z.scatter(-1, order, ordered.masked_fill(outside, float("-inf")))
        return torch.multinomial(z.softmax(-1), 1, generator=generator).squeeze(1)  # (B,)

    return pick


def decode_ids(
    model: Any, prompts: list[list[int]], max_new_tokens: int, stop_id: int | None, pad_id: int | None,
    n: int = 1, pick: Pick | None = None, log_probs: bool = False,
) -> tuple[list[list[int]], list[list[float]]]:  # fmt: skip
    """``n`` continuations of each prompt (rows ``i * n .. i * n + n - 1`` are prompt i's), tokens chosen by ``pick``
    (default greedy), each up to and including ``stop_id`` or ``max_new_tokens`` long; with ``log_probs``, each
    token's log-probability under the model's own distribution (temperature 1, whatever ``pick`` draws from).

    Each prompt runs once (the prefix all prompts share runs once for all) and its KV cache is copied to its ``n``
    rows; a finished row leaves the batch and its cache. A transformers causal LM with a ``DynamicCache``.
    """
    from transformers import DynamicCache

    pick = pick or (lambda logits: logits.argmax(-1))
    device = next(model.parameters()).device
    pad = pad_id if pad_id is not None else 0
    # the prompt's logits are only needed at its last position (transformers models since 4.45; others get all)
    params = inspect.signature(model.forward).parameters
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5.x renames it
    n_shared = shared_prefix(prompts)
    cache = DynamicCache(config=model.config)  # the model's own layer kinds (sliding-window layers stay so)
    replies: list[list[int]] = [[] for _ in range(len(prompts) * n)]
    scores: list[list[float]] = [[] for _ in replies]
    with torch.no_grad():
        if n_shared:
            model(input_ids=torch.tensor([prompts[0][:n_shared]], device=device), use_cache=True,
                  **{cache_arg: cache}, **last_only)  # fmt: skip
            cache.batch_repeat_interleave(len(prompts))  # (1, ...) -> (B, ...)
        own = _left_pad([p[n_shared:] for p in prompts], pad)
        ids, own_mask = own["input_ids"].to(device), own["attention_mask"].to(device)  # (B, S)
        # [shared prefix | left padding | the row's own tokens]; positions count real tokens only
        mask = torch.cat([own_mask.new_ones(len(prompts), n_shared), own_mask], dim=1)  # (B, n_shared + S)
        positions = (n_shared + own_mask.cumsum(1) - 1).masked_fill(own_mask == 0, 1)  # (B, S)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       **{cache_arg: cache}, **last_only).logits  # fmt: skip
        last = positions[:, -1]  # (B,) each row's last position
        if n > 1:  # each prompt's cache, mask and last logits copied to its n rows
            cache.batch_repeat_interleave(n)
            logits, mask, last = (t.repeat_interleave(n, dim=0) for t in (logits[:, -1:], mask, last))
        rows = torch.arange(len(replies), device=device)  # the rows still decoding, in batch order
        for step in range(max_new_tokens):
            token = pick(logits[:, -1])  # (B,)
            for row, t in zip(rows.tolist(), token.tolist(), strict=True):
                replies[row].append(t)
            if log_probs:
                chosen = torch.log_softmax(logits[:, -1].float(), dim=-1).gather(1, token[:, None])  # (B, 1)
                for row, lp in zip(rows.tolist(), chosen.squeeze(1).tolist(), strict=True):
                    scores[row].append(lp)
            going = token != stop_id if stop_id is not None else torch.ones_like(token, dtype=torch.bool)
            if step == max_new_tokens - 1 or not bool(going.any()):
                break
            if not bool(going.all()):  # finished rows leave the batch and its cache
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, token, mask, last = rows[keep], token[keep], mask[keep], last[keep]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            last = last + 1
            logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=last[:, None],
                           use_cache=True, **{cache_arg: cache}).logits  # fmt: skip
    return replies, scores


def generate_all(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Greedy replies for many conversations, batched by prompt length (less padding), in input order."""
    prompts = [prompt_ids(tokenizer, c) for c in conversations]
    return generate_ids(model, tokenizer, prompts, max_new_tokens, batch_size, progress, desc)


def generate_ids(
    model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16,
    progress: bool = True, desc: str = "generating",
) -> list[str]:  # fmt: skip
    """Greedy replies to prompts given as token ids, batched by length, in input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    with tqdm(total=len(prompts), disable=not progress, desc=desc, unit="ex", dynamic_ncols=True) as bar:
        for chunk in _chunks(order, batch_size):
            for i, reply in zip(
                chunk, generate_batch(model, tokenizer, [prompts[i] for i in chunk], max_new_tokens), strict=True
            ):
                replies[i] = reply
            bar.update(len(chunk))
    return replies


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
