"""Attention computed in fp32 for a bf16 model on CPU: the same function as transformers' sdpa, in fp32."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lorakit.train.attention import NAME, fp32_attention, sdpa_fp32
from tests.tiny import tiny_llama, token_ids


@pytest.mark.parametrize("padded", [True, False])
def test_bf16_inputs_get_fp32_attention_and_bf16_gradients(padded: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a mask the kernel runs in grouped-query mode (k, v not repeated); without, sdpa's own path."""
    gen = torch.Generator().manual_seed(0)
    module = tiny_llama().model.layers[0].self_attn  # 4 heads over 2 key/value heads
    q = torch.randn(2, 4, 7, 8, generator=gen).bfloat16().requires_grad_()
    k, v = (torch.randn(2, 2, 7, 8, generator=gen).bfloat16().requires_grad_() for _ in range(2))
    mask: torch.Tensor | None = None
    if padded:
        mask = torch.ones(2, 1, 7, 7, dtype=torch.bool).tril()
        mask[1, :, 2:, :2] = False  # the second row's later queries do not see its first two keys
    seen = []
    kernel = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: seen.append(a[0].dtype) or kernel(*a, **kw))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = sdpa_fp32(module, q, k, v, mask, scaling=0.3)
    monkeypatch.undo()
    assert seen == [torch.float32]
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref, _ = sdpa_attention_forward(module, *leaves, mask, scaling=0.3)  # fp32 sdpa on the same values
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=8e-3, atol=8e-3)  # one bf16 rounding of the output
    upstream = torch.randn(out.shape, generator=gen)
    (out.float() * upstream).sum().backward()
    (ref * upstream.bfloat16().float()).sum().backward()
    for mine, leaf in zip((q, k, v), leaves, strict=True):
        assert mine.grad is not None and mine.grad.dtype == torch.bfloat16 and leaf.grad is not None
        torch.testing.assert_close(mine.grad.float(), leaf.grad, rtol=2e-2, atol=2e-2)  # bf16 rounding of the grad


def test_bf16_model_with_fp32_attention_stays_close_to_fp32() -> None:
    reference = tiny_llama()
    model = copy.deepcopy(reference).bfloat16()
    ids = token_ids()
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # padding: the mask must be built as for sdpa
    calls = []
    with fp32_attention(model), torch.no_grad():
        assert model.config._attn_implementation == NAME
        assert reference.config._attn_implementation == "sdpa", "another model is left alone"
        got = model(ids, attention_mask=mask).logits.float()
        calls.append(NAME in __import__("transformers").AttentionInterface._global_mapping)
        expected = reference(ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], rtol=0.05, atol=0.05)
    assert calls == [True]


def test_outside_the_block_nothing_is_left_changed() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    model = tiny_llama().bfloat16()
    with fp32_attention(model), fp32_attention(model):  # nested blocks (two trainers on one thread)
        pass
    assert model.config._attn_implementation == "sdpa"
    assert NAME not in AttentionInterface._global_mapping and NAME not in AttentionMaskInterface._global_mapping


def test_models_without_sdpa_are_left_alone() -> None:
    model = tiny_llama()
    model.set_attn_implementation("eager")
    with fp32_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "eager"
