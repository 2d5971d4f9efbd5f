"""Attention in float32 on a CPU, for a model that otherwise computes in bf16.

PyTorch's CPU flash-attention kernel is slower in bf16 than in fp32 (torch 2.13, on a CPU with AVX-512 BF16;
measured in docs/speed-and-memory.md), and the attention is a tenth of a training step. So when training runs in
bf16 on a CPU, q, k and v are cast to fp32 for the attention (each is (B, heads, T, 64): the
casts cost far less than they save) and the output is cast back. The projections around it stay in bf16.

This is transformers' own ``sdpa`` attention with the casts around it. transformers finds a model's attention
function by name in a process-wide registry (``AttentionInterface``), so ``fp32_attention(model)`` adds it there
under a name of its own and switches only that model to it, both only while the block runs (the trainer's forward
and backward): outside it the registry and the model are as they were, and no other model ever sees it. Nothing
of transformers is patched. On other devices, or for fp32 inputs, it is plain ``sdpa``. With a padding mask and
grouped-query attention it calls the kernel in its grouped mode instead of repeating k and v (see below).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NAME = "lorakit_sdpa_fp32"


def sdpa_fp32(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:  # fmt: skip
    """``sdpa`` attention, computed in float32 when the inputs (or autocast) are bf16/fp16 on a CPU."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    low = query.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")
    if query.device.type != "cpu" or not low:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)  # type: ignore[no-any-return]
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    if isinstance(kwargs.get("position_bias"), torch.Tensor):
        kwargs["position_bias"] = kwargs["position_bias"].float()
    groups = getattr(module, "num_key_value_groups", 1)
    plain = all(kwargs.get(k) is None for k in ("position_bias", "softcap")) and not kwargs.get("output_attentions")
    with torch.autocast("cpu", enabled=False):  # autocast would cast q, k, v back to bf16 for the kernel
        if attention_mask is not None and groups > 1 and query.shape[2] > 1 and plain:
            # With a (padding) mask, transformers repeats k and v for each query head (B, kv, S, d) -> (B, heads,
            # S, d); the kernel's own grouped-query mode reads them in place: same result, no copies and no sum
            # over the copies in the backward (a quarter less time per layer, docs/speed-and-memory.md).
            out = F.scaled_dot_product_attention(
                query.float(), key.float(), value.float(), attn_mask=attention_mask,
                dropout_p=kwargs.get("dropout", 0.0), scale=kwargs.get("scaling"), enable_gqa=True,
            )  # fmt: skip
            return out.transpose(1, 2).contiguous().to(value.dtype), None  # (B, T, heads, d), as sdpa's
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )  # out (B, T, heads, d)
    return out.to(value.dtype), weights


_users = 0  # blocks inside fp32_attention right now (several trainers, or threads), guarded by _lock
_lock = threading.Lock()


def _register(add: bool) -> None:
    """Add the name to (or take it out of) transformers' attention and mask registries; the first block in adds,
    the last one out removes."""
    global _users
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    with _lock:
        _users += 1 if add else -1
        if add and _users == 1:
            AttentionInterface._global_mapping[NAME] = sdpa_fp32
            AttentionMaskInterface._global_mapping[NAME] = sdpa_mask  # the same masks as sdpa
        elif not add and _users == 0:
            AttentionInterface._global_mapping.pop(NAME, None)
            AttentionMaskInterface._global_mapping.pop(NAME, None)


def uses_sdpa(model: nn.Module) -> bool:
    """A transformers model whose attention is ``sdpa`` (the one ``fp32_attention`` can switch)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == "sdpa"


@contextlib.contextmanager
def fp32_attention(model: nn.Module) -> Iterator[None]:
    """Inside the block, ``model`` (a transformers model using ``sdpa``) computes attention with ``sdpa_fp32``;
    any other model is left alone. Cover the backward too: activation checkpointing re-runs the forward there."""
    if not uses_sdpa(model):
        yield
        return
    config: Any = model.config
    _register(add=True)
    config._attn_implementation = NAME  # the config's setter reaches its sub-configs too
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
        _register(add=False)
