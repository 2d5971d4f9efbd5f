"""combine_adapters against peft's add_weighted_adapter on the same adapters, and against float64 maths."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import peft
import pytest
import torch
from torch import nn

import lorakit
from tests.tiny import Toy, tiny_gpt2, tiny_llama


def _ids(vocab: int = 97) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(3))


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


def _two_peft_adapters(base: nn.Module, first: dict, second: dict, tmp_path: Path) -> peft.PeftModel:
    torch.manual_seed(7)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**first, init_lora_weights=False), "one")
    theirs.add_adapter("two", peft.LoraConfig(**second, init_lora_weights=False))
    theirs.save_pretrained(tmp_path)  # "one" at tmp_path, "two" in tmp_path/two
    return theirs


CASES: list[tuple[str, Callable[[], nn.Module], dict, dict, int]] = [
    ("llama", tiny_llama, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
     {"r": 4, "lora_alpha": 4, "target_modules": ["v_proj", "down_proj"]}, 97),
    ("gpt2", tiny_gpt2, {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "fan_in_fan_out": True},
     {"r": 4, "lora_alpha": 16, "target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}, 97),
    ("toy-embedding", Toy, {"r": 3, "lora_alpha": 6, "target_modules": ["emb", "lin"]},
     {"r": 3, "lora_alpha": 3, "target_modules": ["emb", "lin"]}, 20),
]  # fmt: skip


@pytest.mark.parametrize("method", ["cat", "linear", "svd"])
@pytest.mark.parametrize(("name", "factory", "first", "second", "vocab"), CASES, ids=[c[0] for c in CASES])
def test_matches_peft_add_weighted_adapter(name, factory, first, second, vocab, method, tmp_path: Path) -> None:
    base, x = factory(), _ids(vocab)
    theirs = _two_peft_adapters(base, first, second, tmp_path)
    ours = lorakit.load_adapter(copy.deepcopy(base), tmp_path, "one")
    lorakit.load_adapter(ours, tmp_path / "two", "two")
    weights, rank = [0.7, -1.3], (3 if method == "svd" else None)
    theirs.add_weighted_adapter(["one", "two"], weights, "mix", combination_type=method, svd_rank=rank)
    theirs.set_adapter("mix")
    lorakit.combine_adapters(ours, ["one", "two"], weights, "mix", method, rank=rank)
    expected = _out(theirs.eval(), x)
    assert (expected - _out(base, x)).abs().max() > 1e-3
    torch.testing.assert_close(_out(ours, x), expected, atol=1e-5, rtol=0)
    assert lorakit.count_parameters(ours)[0] == 0


def test_cat_is_the_exact_weighted_sum_and_svd_the_best_rank_k() -> None:
    model = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj"],
                                                                 init_lora_weights=False), "a")  # fmt: skip
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"],
                                                  init_lora_weights=False, use_rslora=True), "b")  # fmt: skip
    layer = model.model.layers[0].self_attn.q_proj
    want = 0.5 * layer.delta_weight("a").double() + 2.0 * layer.delta_weight("b").double()
    lorakit.combine_adapters(model, ["a", "b"], [0.5, 2.0], "cat", "cat")
    assert layer.r["cat"] == 5
    torch.testing.assert_close(layer.delta_weight("cat").double(), want, atol=1e-6, rtol=0)
    lorakit.combine_adapters(model, ["a", "b"], [0.5, 2.0], "svd2", "svd", rank=2)
    u, s, vh = torch.linalg.svd(want)
    best = (u[:, :2] * s[:2]) @ vh[:2]  # Eckart-Young
    torch.testing.assert_close(layer.delta_weight("svd2").double(), best, atol=1e-5, rtol=0)


def test_refusals() -> None:
    model = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(r=4, target_modules=["q_proj"]), "a")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"]), "b")
    with pytest.raises(lorakit.AdapterError, match="one rank"):
        lorakit.combine_adapters(model, ["a", "b"], [1, 1], "c", "linear")
    with pytest.raises(lorakit.AdapterError, match="unknown adapter 'z'"):
        lorakit.combine_adapters(model, ["a", "z"], [1, 1], "c", "cat")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True), "d")
    with pytest.raises(lorakit.AdapterError, match="plain LoRA adapters only"):
        lorakit.combine_adapters(model, ["a", "d"], [1, 1], "c", "cat")
