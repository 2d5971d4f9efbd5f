"""Attention in float32 on a CPU, for a model that otherwise computes in bf16.

PyTorch's CPU flash-attention kernel is slower in bf16 than in fp32 (torch 2.13, Zen 4 with AVX-512 BF16):
forward + backward of one SmolLM2 layer's attention (4 x 9 heads x 167 queries x 214 keys x 64) takes 32-36 ms
in bf16 and 20-25 ms in fp32 on one thread; measured in a training step, that is ~10% of the step. So when
training runs in bf16 on a CPU, q, k and v are cast to fp32 for the attention (each is (B, heads, T, 64): the
casts cost far less than they save) and the output is cast back. The projections around it stay in bf16.

This is transformers' own ``sdpa`` attention with the casts around it, registered under a name of its own
through transformers' ``AttentionInterface`` (the documented way to plug in an attention function); nothing of
transformers is patched. On other devices, or for fp32 inputs, it is plain ``sdpa``. With a padding mask and
grouped-query attention it calls the kernel in its grouped mode instead of repeating k and v (see below).
"""

from __future__ import annotations

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
            # over the copies in the backward (1 thread, fp32: 18 instead of 24 ms per layer, fwd+bwd).
            out = F.scaled_dot_product_attention(
                query.float(), key.float(), value.float(), attn_mask=attention_mask,
                dropout_p=kwargs.get("dropout", 0.0), scale=kwargs.get("scaling"), enable_gqa=True,
            )  # fmt: skip
            return out.transpose(1, 2).contiguous().to(value.dtype), None  # (B, T, heads, d), as sdpa's
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )  # out (B, T, heads, d)
    return out.to(value.dtype), weights


def use_fp32_attention(model: nn.Module) -> bool:
    """Switch a transformers model that uses ``sdpa`` to ``sdpa_fp32``; False (nothing changed) for any other."""
    config = getattr(model, "config", None)
    set_implementation = getattr(model, "set_attn_implementation", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not callable(set_implementation):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_fp32)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as sdpa
    set_implementation(NAME)
    return True
