"""The wrappers' maths against float64 references computed by hand, and property tests."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lorakit import layers


def _linear(dtype: torch.dtype = torch.float64) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(6, 5, dtype=dtype)


def test_linear_forward_is_w_x_plus_scaled_b_a_x() -> None:
    base = _linear()
    layer = layers.Linear(base)
    layer.add("a", r=3, lora_alpha=6, lora_dropout=0.0, use_rslora=False, init=False)
    layer.active_adapters = ["a"]
    x = torch.randn(4, 6, dtype=torch.float64)
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    expected = x @ base.weight.T + base.bias + (6 / 3) * (x @ a.T @ b.T)
    torch.testing.assert_close(layer(x), expected)


def test_rslora_scaling_is_alpha_over_sqrt_r() -> None:
    layer = layers.Linear(_linear())
    layer.add("a", r=4, lora_alpha=8, lora_dropout=0.0, use_rslora=True, init=True)
    assert layer.scaling["a"] == 8 / math.sqrt(4)


def test_two_active_adapters_add_their_deltas() -> None:
    layer = layers.Linear(_linear())
    for name, r in (("a", 2), ("b", 3)):
        layer.add(name, r=r, lora_alpha=4, lora_dropout=0.0, use_rslora=False, init=False)
    x = torch.randn(3, 6, dtype=torch.float64)
    base_out = layer.base_layer(x)
    deltas = {}
    for name in ("a", "b"):
        layer.active_adapters = [name]
        deltas[name] = layer(x) - base_out
    layer.active_adapters = ["a", "b"]
    torch.testing.assert_close(layer(x), base_out + deltas["a"] + deltas["b"])


def test_gpt2_conv1d_uses_transposed_weight() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    base = Conv1D(5, 6).double()  # nf=5 outputs, nx=6 inputs; weight (6, 5)
    nn.init.normal_(base.weight)
    layer = layers.wrap(base)
    assert isinstance(layer, layers.Linear) and layer.fan_in_fan_out
    layer.add("a", r=2, lora_alpha=2, lora_dropout=0.0, use_rslora=False, init=False)
    layer.active_adapters = ["a"]
    x = torch.randn(3, 6, dtype=torch.float64)
    delta = layer.lora_B["a"].weight @ layer.lora_A["a"].weight  # (out, in)
    torch.testing.assert_close(layer(x), x @ base.weight + base.bias + x @ delta.T)
    assert layer.delta_weight("a").shape == base.weight.shape


def test_embedding_forward_and_default_init() -> None:
    torch.manual_seed(0)
    base = nn.Embedding(11, 4, dtype=torch.float64)
    layer = layers.Embedding(base)
    layer.add("a", r=2, lora_alpha=4, lora_dropout=0.0, use_rslora=False, init=True)
    assert torch.count_nonzero(layer.lora_embedding_A["a"]) == 0  # A zero, B normal: a fresh no-op
    assert torch.count_nonzero(layer.lora_embedding_B["a"]) > 0
    nn.init.normal_(layer.lora_embedding_A["a"])
    layer.active_adapters = ["a"]
    ids = torch.tensor([[1, 5, 10]])
    a, b = layer.lora_embedding_A["a"], layer.lora_embedding_B["a"]
    expected = base.weight[ids] + 2.0 * (a.T[ids] @ b.T)
    torch.testing.assert_close(layer(ids), expected)


@pytest.mark.parametrize("conv", [nn.Conv1d, nn.Conv2d])
def test_conv_delta_weight_reproduces_the_lora_path(conv: type[nn.Module]) -> None:
    torch.manual_seed(0)
    base = conv(3, 4, 3, padding=1, stride=1, dtype=torch.float64)
    layer = layers.Conv(base)  # type: ignore[arg-type]
    layer.add("a", r=2, lora_alpha=3, lora_dropout=0.0, use_rslora=False, init=False)
    layer.active_adapters = ["a"]
    shape = (2, 3, 7) if conv is nn.Conv1d else (2, 3, 5, 6)
    x = torch.randn(shape, dtype=torch.float64)
    conv_fn = F.conv1d if conv is nn.Conv1d else F.conv2d
    expected = conv_fn(x, base.weight + layer.delta_weight("a"), base.bias, padding=1)
    torch.testing.assert_close(layer(x), expected)


def test_grouped_conv_is_refused() -> None:
    with pytest.raises(ValueError, match="groups=2"):
        layers.Conv(nn.Conv1d(4, 4, 3, groups=2))


def _make(kind: str, dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
    if kind == "linear":
        return nn.Linear(7, 5, dtype=dtype), torch.randn(3, 7, dtype=dtype)
    if kind == "embedding":
        return nn.Embedding(13, 6, dtype=dtype), torch.randint(0, 13, (2, 5))
    if kind == "conv1d":
        return nn.Conv1d(3, 4, 3, padding=1, dtype=dtype), torch.randn(2, 3, 9, dtype=dtype)
    return nn.Conv2d(2, 3, 3, padding=1, dtype=dtype), torch.randn(1, 2, 5, 5, dtype=dtype)


KINDS = st.sampled_from(["linear", "embedding", "conv1d", "conv2d"])
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.bfloat16])


@settings(deadline=None)
@given(kind=KINDS, dtype=DTYPES, r=st.integers(1, 6), alpha=st.floats(0.5, 32), seed=st.integers(0, 2**16))
def test_fresh_adapter_changes_nothing(kind: str, dtype: torch.dtype, r: int, alpha: float, seed: int) -> None:
    torch.manual_seed(seed)
    base, x = _make(kind, dtype)
    expected = base(x)
    layer = layers.wrap(base)
    layer.add("a", r=r, lora_alpha=alpha, lora_dropout=0.0, use_rslora=False, init=True)
    layer.active_adapters = ["a"]
    assert torch.equal(layer(x), expected)


@settings(deadline=None)
@given(kind=KINDS, dtype=DTYPES, r=st.integers(1, 6), alpha=st.floats(0.5, 32), seed=st.integers(0, 2**16))
def test_merge_then_unmerge_is_identity_and_merge_keeps_outputs(
    kind: str, dtype: torch.dtype, r: int, alpha: float, seed: int
) -> None:
    torch.manual_seed(seed)
    base, x = _make(kind, dtype)
    original = base.weight.detach().clone()
    layer = layers.wrap(base)
    layer.add("a", r=r, lora_alpha=alpha, lora_dropout=0.0, use_rslora=False, init=False)
    layer.active_adapters = ["a"]
    unmerged_out = layer(x).detach()
    layer.merge(["a"])
    merged_out = layer(x).detach()
    layer.unmerge()
    # bf16 weights round on every merge; float32/float64 merges are exact to rounding of the sum.
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 0.25}[dtype]
    scale = 1.0 + unmerged_out.abs().max().item()
    assert (merged_out.double() - unmerged_out.double()).abs().max().item() <= tol * scale
    if dtype != torch.bfloat16:
        delta_scale = 1.0 + layer.delta_weight("a").abs().max().item()
        assert (base.weight.double() - original.double()).abs().max().item() <= tol * delta_scale


def test_safe_merge_refuses_non_finite_and_leaves_weight() -> None:
    layer = layers.Linear(_linear(torch.float32))
    layer.add("a", r=2, lora_alpha=2, lora_dropout=0.0, use_rslora=False, init=False)
    with torch.no_grad():
        layer.lora_B["a"].weight[0, 0] = float("nan")
    before = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match="non-finite"):
        layer.merge(["a"], safe=True)
    assert torch.equal(layer.base_layer.weight, before) and layer.merged_adapters == []


def test_dropout_applies_only_in_training() -> None:
    layer = layers.Linear(_linear(torch.float32))
    layer.add("a", r=4, lora_alpha=4, lora_dropout=0.5, use_rslora=False, init=False)
    layer.active_adapters = ["a"]
    x = torch.randn(64, 6)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    torch.manual_seed(0)
    assert not torch.equal(layer(x), layer(x))
