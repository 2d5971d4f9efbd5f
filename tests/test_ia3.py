"""(IA)^3 against the real peft package: files both ways with equal logits, peft's defaults, merge, training."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import lorakit
from lorakit.config import IA3Config
from lorakit.variants.ia3 import IA3Linear
from tests.tiny import logits_of, tiny_gpt2, tiny_llama, token_ids

CASES: list[tuple[str, Callable[[], nn.Module], dict]] = [
    ("llama-defaults", tiny_llama, {}),
    ("llama", tiny_llama, {"target_modules": ["k_proj", "v_proj", "down_proj", "up_proj"],
                           "feedforward_modules": ["down_proj", "up_proj"]}),
    ("llama-regex", tiny_llama, {"target_modules": r".*\.(v_proj|down_proj)", "feedforward_modules": r".*down_proj"}),
    ("gpt2", tiny_gpt2, {"target_modules": ["c_attn", "mlp.c_proj"], "feedforward_modules": ["mlp.c_proj"],
                         "fan_in_fan_out": True}),
]  # fmt: skip
IDS = [c[0] for c in CASES]


def _randomize(model: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ia3_l" in name:
                param.copy_(1 + 0.5 * torch.randn(param.shape, generator=gen, dtype=param.dtype))


@pytest.mark.parametrize(("name", "factory", "kwargs"), CASES, ids=IDS)
def test_lorakit_saves_peft_loads(name: str, factory: Callable[[], nn.Module], kwargs: dict, tmp_path: Path) -> None:
    base, x = factory(), token_ids()
    ours = lorakit.add_adapter(copy.deepcopy(base), IA3Config(**kwargs))
    _randomize(ours)
    lorakit.save_adapter(ours, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "IA3"
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    expected = logits_of(theirs, x)
    assert (expected - logits_of(base, x)).abs().max() > 1e-2, "the adapter must change the output"
    torch.testing.assert_close(logits_of(ours, x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "factory", "kwargs"), CASES, ids=IDS)
def test_peft_saves_lorakit_loads(name: str, factory: Callable[[], nn.Module], kwargs: dict, tmp_path: Path) -> None:
    base, x = factory(), token_ids()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.IA3Config(**kwargs)).eval()
    _randomize(theirs)
    theirs.save_pretrained(tmp_path)
    ours = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    expected = logits_of(theirs, x)
    assert (expected - logits_of(base, x)).abs().max() > 1e-2
    torch.testing.assert_close(logits_of(ours, x), expected, atol=1e-5, rtol=0)
    # Same tensors under the same keys and shapes as peft wrote them.
    lorakit.save_adapter(ours, tmp_path / "again")
    mine, want = (
        load_file(tmp_path / "again" / "adapter_model.safetensors"),
        load_file(tmp_path / "adapter_model.safetensors"),
    )
    assert mine.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(mine[key], value, atol=0, rtol=0)


def test_defaults_are_peft_defaults() -> None:
    model = lorakit.add_adapter(tiny_llama(), IA3Config())
    layers = {n: m for n, m in model.named_modules() if isinstance(m, IA3Linear)}
    assert sorted({n.rsplit(".", 1)[1] for n in layers}) == ["down_proj", "k_proj", "v_proj"]
    assert all(m.is_feedforward == n.endswith("down_proj") for n, m in layers.items())
    assert lorakit.count_parameters(model)[0] == 2 * (16 + 16 + 48)  # k (out 16), v (out 16), down (in 48)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_merge_unmerge_and_disable(factory: Callable[[], nn.Module]) -> None:
    base, x = factory(), token_ids()
    model = lorakit.add_adapter(copy.deepcopy(base), IA3Config())
    _randomize(model)
    unmerged = logits_of(model, x)
    with lorakit.disable_adapters(model):
        torch.testing.assert_close(logits_of(model, x), logits_of(base, x), atol=1e-6, rtol=0)
    lorakit.merge_adapters(model)
    torch.testing.assert_close(logits_of(model, x), unmerged, atol=1e-5, rtol=0)
    lorakit.unmerge_adapters(model)
    torch.testing.assert_close(logits_of(model, x), unmerged, atol=1e-5, rtol=0)
    merged = lorakit.unload(model)
    assert not any(isinstance(m, IA3Linear) for m in merged.modules())
    torch.testing.assert_close(logits_of(merged, x), unmerged, atol=1e-5, rtol=0)


def test_bias_is_scaled_on_output_layers() -> None:
    """``l * (W x + b)``: merged, the bias is scaled too (GPT-2's c_attn has a bias), checked by hand."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    model = lorakit.add_adapter(copy.deepcopy(net), IA3Config(target_modules=["0", "2"], feedforward_modules=["2"]))
    _randomize(model)
    l_out, l_in = model[0].ia3_l["default"].detach().flatten(), model[2].ia3_l["default"].detach().flatten()
    x = torch.randn(5, 6)
    hidden = torch.relu(l_out * (x @ net[0].weight.T + net[0].bias))
    want = (hidden * l_in) @ net[2].weight.T + net[2].bias
    torch.testing.assert_close(model(x), want, atol=1e-6, rtol=0)


def test_train_changes_only_the_vectors() -> None:
    model, x = lorakit.add_adapter(tiny_llama(), IA3Config()), token_ids()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimiser = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(x, labels=x).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


def test_ia3_and_lora_cannot_share_a_layer() -> None:
    model = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(target_modules=["v_proj"]))
    with pytest.raises(lorakit.AdapterError, match="cannot share a layer"):
        lorakit.add_adapter(model, IA3Config(target_modules=["v_proj"]), "ia3")
    with pytest.raises(ValueError, match="feedforward_modules must be a subset"):
        IA3Config(target_modules=["k_proj"], feedforward_modules=["down_proj"])
