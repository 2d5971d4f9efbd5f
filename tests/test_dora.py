"""DoRA against the real peft package: same logits and gradients from the same weights, files both ways, exact
merge, and the weight norm against a float64 reference."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import peft
import pytest
import torch
from torch import nn

import lorakit
from lorakit.variants.dora import DoraLinear
from tests.tiny import logits_of, randomize_lora_b, tiny_gpt2, tiny_llama, token_ids

CASES: list[tuple[str, Callable[[], nn.Module], dict]] = [
    ("llama", tiny_llama, {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}),
    ("llama-rslora", tiny_llama, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "down_proj"],
                                  "use_rslora": True, "rank_pattern": {"down_proj": 2}}),
    ("gpt2", tiny_gpt2, {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj", "c_fc"],
                         "fan_in_fan_out": True}),
]  # fmt: skip
IDS = [c[0] for c in CASES]


def _our_key(peft_key: str) -> str:
    """peft's in-memory name -> lorakit's (peft keeps the magnitude in a module, hence its extra ``.weight``)."""
    key = peft_key.removeprefix("base_model.model.")
    return key.replace("lora_magnitude_vector.default.weight", "lora_magnitude_vector.default")


def _perturb_magnitudes(model: nn.Module, seed: int = 2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.3 * torch.rand(param.shape, generator=gen, dtype=param.dtype))


@pytest.mark.parametrize(("name", "factory", "kwargs"), CASES, ids=IDS)
def test_lorakit_saves_peft_loads(name: str, factory: Callable[[], nn.Module], kwargs: dict, tmp_path: Path) -> None:
    base, x = factory(), token_ids()
    ours = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(**kwargs, use_dora=True))
    randomize_lora_b(ours)
    _perturb_magnitudes(ours)
    lorakit.save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    expected = logits_of(theirs, x)
    assert (expected - logits_of(base, x)).abs().max() > 1e-2, "the adapter must change the output"
    torch.testing.assert_close(logits_of(ours, x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "factory", "kwargs"), CASES, ids=IDS)
def test_peft_saves_lorakit_loads(name: str, factory: Callable[[], nn.Module], kwargs: dict, tmp_path: Path) -> None:
    base, x = factory(), token_ids()
    config = peft.LoraConfig(**kwargs, use_dora=True, init_lora_weights=False)
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    _perturb_magnitudes(theirs)
    theirs.save_pretrained(tmp_path)
    ours = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    expected = logits_of(theirs, x)
    assert (expected - logits_of(base, x)).abs().max() > 1e-2
    torch.testing.assert_close(logits_of(ours, x), expected, atol=1e-5, rtol=0)
    assert any(isinstance(m, DoraLinear) for m in ours.modules())


def test_gradients_match_peft() -> None:
    """The norm is detached as in peft (paper section 4.3): A, B and m get peft's gradients."""
    base, x = tiny_llama(), token_ids()
    kwargs = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]}
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs, use_dora=True, init_lora_weights=False))
    _perturb_magnitudes(theirs)
    ours = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(**kwargs, use_dora=True))
    with torch.no_grad():
        mine = dict(ours.named_parameters())
        for pname, param in theirs.named_parameters():
            if param.requires_grad:
                mine[_our_key(pname)].copy_(param)
    theirs.train()
    ours.train()
    theirs(x, labels=x).loss.backward()
    ours(x, labels=x).loss.backward()
    checked = 0
    for pname, param in theirs.named_parameters():
        if param.requires_grad:
            got = mine[_our_key(pname)].grad
            assert got is not None and param.grad is not None
            torch.testing.assert_close(got, param.grad, atol=1e-6, rtol=1e-4)
            checked += 1
    assert checked == 2 * 3 * 3  # A, B, m on 3 modules in 2 layers


def test_weight_norm_against_float64() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(24, 16, bias=True)
    model = nn.Sequential(layer)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=3, lora_alpha=6, target_modules=["0"], use_dora=True))
    dora = model[0]
    assert isinstance(dora, DoraLinear)
    randomize_lora_b(model)
    a, b = dora.lora_A["default"].weight.double(), dora.lora_B["default"].weight.double()
    w = layer.weight.double()
    expected = torch.linalg.norm(w + 2.0 * b @ a, dim=1)
    torch.testing.assert_close(dora.weight_norm("default").double(), expected, atol=1e-6, rtol=1e-6)
    # The output is m/n (W + s B A) x + bias, computed here in float64.
    m = dora.lora_magnitude_vector["default"].double()
    x = torch.randn(5, 24, dtype=torch.float64)
    want = (m / expected) * (x @ (w + 2.0 * b @ a).T) + layer.bias.double()
    torch.testing.assert_close(model(x.float()).double(), want, atol=1e-5, rtol=1e-5)
    # The cached norm follows in-place changes of B (an optimiser step).
    with torch.no_grad():
        dora.lora_B["default"].weight.mul_(2)
    b2 = dora.lora_B["default"].weight.double()
    torch.testing.assert_close(
        dora.weight_norm("default").double(), torch.linalg.norm(w + 2.0 * b2 @ a, dim=1), atol=1e-6, rtol=1e-6
    )


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_merge_is_exact_and_unmerge_restores(factory: Callable[[], nn.Module]) -> None:
    base, x = factory(), token_ids()
    model = copy.deepcopy(base)
    targets = "all-linear"
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True), "d1")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, lora_alpha=2, target_modules=targets, use_dora=True), "d2")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, lora_alpha=4, target_modules=targets), "plain")
    randomize_lora_b(model)
    _perturb_magnitudes(model)
    lorakit.set_adapters(model, ["d1", "d2", "plain"])
    unmerged = logits_of(model, x)
    lorakit.merge_adapters(model, ["d1"])
    torch.testing.assert_close(logits_of(model, x), unmerged, atol=1e-5, rtol=0)
    lorakit.merge_adapters(model, ["plain", "d2"])  # merged in two goes: still the same model
    torch.testing.assert_close(logits_of(model, x), unmerged, atol=1e-5, rtol=0)
    lorakit.unmerge_adapters(model)
    for (name, param), (_, original) in zip(
        lorakit.unload(copy.deepcopy(model), merge=False).named_parameters(), base.named_parameters(), strict=True
    ):
        torch.testing.assert_close(param, original, atol=1e-6, rtol=0, msg=name)
    merged = lorakit.unload(model)
    torch.testing.assert_close(logits_of(merged, x), unmerged, atol=1e-5, rtol=0)


def test_merged_dora_matches_peft_merge() -> None:
    base, x = tiny_llama(), token_ids()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=True, init_lora_weights=False)
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    _perturb_magnitudes(theirs)
    ours = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                       use_dora=True))  # fmt: skip
    ours.load_state_dict({_our_key(k): v for k, v in theirs.state_dict().items()}, strict=True)
    theirs_merged = theirs.merge_and_unload()
    ours_merged = lorakit.unload(ours)
    for (name, mine), (_, want) in zip(ours_merged.named_parameters(), theirs_merged.named_parameters(), strict=True):
        torch.testing.assert_close(mine, want, atol=2e-6, rtol=0, msg=name)
    torch.testing.assert_close(logits_of(ours_merged, x), logits_of(theirs_merged, x), atol=1e-5, rtol=0)


def test_dora_refuses_embeddings() -> None:
    with pytest.raises(lorakit.AdapterError, match="use_dora"):
        lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(target_modules=["embed_tokens"], use_dora=True))


def test_training_forward_with_dropout_matches_peft() -> None:
    """With dropout the base term sees the dropped-out input too (peft's behaviour); same seed, same masks."""
    base, x = tiny_llama(), token_ids()
    kwargs = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.3}
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs, use_dora=True, init_lora_weights=False))
    _perturb_magnitudes(theirs)
    ours = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(**kwargs, use_dora=True))
    ours.load_state_dict({_our_key(k): v for k, v in theirs.state_dict().items()}, strict=True)
    theirs.train()
    ours.train()
    torch.manual_seed(11)
    want = theirs(x).logits
    torch.manual_seed(11)
    got = ours(x).logits
    torch.manual_seed(12)
    assert (ours(x).logits - got).abs().max() > 1e-4, "dropout is on"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
