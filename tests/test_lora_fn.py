"""The hand-written LoRA backward against autograd (gradcheck in float64, plain nn.Linear autograd), and the
shared-input product of sibling layers against each layer computing its own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorakit import layers
from lorakit.lora_fn import LoraDown, lora_product
from tests.tiny import randomize_lora_b, tiny_llama, token_ids


@pytest.mark.parametrize("scalings", [(1.7,), (0.5, 0.5, 0.5), (1.7, 0.5, 3.0)])
def test_gradcheck_float64(scalings: tuple[float, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    weights = [torch.randn(r, 5, dtype=torch.float64, generator=gen, requires_grad=True) for r in (4, 2, 3)]
    weights = weights[: len(scalings)]

    def down(x: torch.Tensor, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return LoraDown.apply(x, scalings, torch.float64, *weights)  # type: ignore[no-any-return]

    assert torch.autograd.gradcheck(down, (x, *weights))
    parts = down(x, *weights)
    for part, w, s in zip(parts, weights, scalings, strict=True):  # and the forward is s_i x A_i^T, part by part
        torch.testing.assert_close(part, s * x @ w.T)


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


def _grads_after_step(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(ids).logits
    logits.pow(2).mean().backward()
    return logits.detach(), [p.grad for p in model.parameters() if p.requires_grad]  # type: ignore[misc]


def test_shared_input_product_equals_each_layer_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """q/k/v and gate/up of a Llama share one x A^T product: same logits and gradients in float64, fewer calls.

    Ranks and scalings differ between siblings (rank_pattern, rsLoRA), so the per-part scaling path runs too."""
    import lorakit

    model = tiny_llama().double()
    config = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", rank_pattern={"k_proj": 2},
                                use_rslora=True)  # fmt: skip
    lorakit.add_adapter(model, config)
    randomize_lora_b(model)
    model.train()
    calls = []
    apply = LoraDown.apply
    monkeypatch.setattr(LoraDown, "apply", lambda *args: calls.append(len(args) - 3) or apply(*args))
    ids = token_ids()
    shared_logits, shared_grads = _grads_after_step(model, ids)
    # per decoder layer: one product for q/k/v, one for gate/up, one each for o_proj and down_proj
    assert sorted(calls) == [1, 1, 1, 1, 2, 2, 3, 3]
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.input_group.members == [attention.q_proj, attention.k_proj, attention.v_proj]

    for module in model.modules():
        if isinstance(module, lorakit.layers.Linear):
            module.input_group = None
    calls.clear()
    own_logits, own_grads = _grads_after_step(model, ids)
    assert calls == [1] * 14  # 7 projections x 2 layers, each its own product
    torch.testing.assert_close(shared_logits, own_logits, rtol=1e-12, atol=1e-12)
    for mine, ref in zip(shared_grads, own_grads, strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)


class _TwoInputs(nn.Module):
    """Two sibling Linear layers named like q/k_proj that a forward calls on different (or changed) inputs."""

    def __init__(self, change_in_place: bool) -> None:
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(6, 5, dtype=torch.float64), nn.Linear(6, 5, dtype=torch.float64)
        self.change_in_place = change_in_place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.q_proj(x)
        if self.change_in_place:
            x.mul_(2.0)  # same tensor, new values: k_proj must not get a part computed from the old ones
            return y + self.k_proj(x)
        return y + self.k_proj(x + 1.0)


@pytest.mark.parametrize("change_in_place", [False, True])
def test_sibling_with_another_input_computes_its_own(change_in_place: bool) -> None:
    import lorakit

    config = lorakit.LoraConfig(r=2, target_modules=["q_proj", "k_proj"])
    model = lorakit.add_adapter(_TwoInputs(change_in_place), config)
    randomize_lora_b(model)
    group = model.q_proj.input_group
    assert group is not None and group is model.k_proj.input_group
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.randn(3, 6, dtype=torch.float64, generator=gen)
        with torch.no_grad():
            got = model(x.clone())
            expected = 0.0
            for layer, inp in ((model.q_proj, x), (model.k_proj, x * 2.0 if change_in_place else x + 1.0)):
                a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
                expected = expected + layer.base_layer(inp) + layer.scaling["default"] * inp @ a.T @ b.T
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert not group.pending  # k_proj took (and dropped) its part: nothing is left waiting
