"""The hand-written LoRA backward against autograd: gradcheck in float64 and plain nn.Linear autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorakit import layers
from lorakit.lora_fn import LoraProduct, lora_product


def test_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    a = torch.randn(4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(6, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: LoraProduct.apply(x, a, b, 1.7, torch.float64), (x, a, b))


def test_matches_two_linear_calls_and_their_autograd() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 8, dtype=torch.float64, generator=gen)
    a = torch.randn(4, 8, dtype=torch.float64, generator=gen)
    b = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    upstream = torch.randn(3, 7, 5, dtype=torch.float64, generator=gen)
    grads = []
    for fn in (lambda x, a, b: lora_product(x, a, b, 0.5), lambda x, a, b: ((x @ a.T) @ b.T) * 0.5):
        leaves = [t.clone().requires_grad_() for t in (x, a, b)]
        out = fn(*leaves)
        (out * upstream).sum().backward()
        grads.append([out.detach(), *(t.grad for t in leaves)])
    for mine, ref in zip(*grads, strict=True):
        torch.testing.assert_close(mine, ref)


def test_input_without_grad_gets_none_and_weights_still_train() -> None:
    x = torch.randn(4, 6)
    a = torch.randn(2, 6, requires_grad=True)
    b = torch.randn(3, 2, requires_grad=True)
    lora_product(x, a, b, 2.0).sum().backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(b.grad, 2.0 * (x @ a.T).sum(0).expand(3, 2).detach())


def test_bf16_autocast_computes_in_bf16_and_returns_fp32_weight_grads() -> None:
    x = torch.randn(4, 6, dtype=torch.bfloat16, requires_grad=True)
    a = torch.randn(2, 6, requires_grad=True)
    b = torch.randn(3, 2, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lora_product(x, a, b, 1.0)
        ref = nn.functional.linear(nn.functional.linear(x, a), b)  # what autocast does with two Linear calls
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)
    out.float().sum().backward()
    assert a.grad is not None and a.grad.dtype == torch.float32 and x.grad is not None
    assert x.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_layer_gradients_match_plain_autograd(dropout: float) -> None:
    torch.manual_seed(0)
    layer = layers.Linear(nn.Linear(8, 5, dtype=torch.float64))
    layer.add("a", r=3, lora_alpha=6, lora_dropout=dropout, use_rslora=False, init=False)
    layer.active_adapters = ["a"]
    layer.eval()  # dropout off: both paths are the same function
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    layer(x).pow(2).sum().backward()
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    x2 = x.detach().clone().requires_grad_()
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    (layer.base_layer(x2) + 2.0 * (x2 @ a2.T @ b2.T)).pow(2).sum().backward()
    for mine, ref in ((x.grad, x2.grad), (a.grad, a2.grad), (b.grad, b2.grad)):
        torch.testing.assert_close(mine, ref)
