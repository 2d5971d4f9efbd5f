"""The public operations on a model: add, set, disable, delete, merge, unmerge, unload."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lorakit
from lorakit.layers import LoraLayer
from tests.tiny import Toy, randomize_lora_b, tiny_gpt2, tiny_llama

X = torch.arange(1, 10)[None]


def _logits(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


def _adapted(seed: int = 1, **kwargs: object) -> tuple[nn.Module, nn.Module]:
    base = tiny_llama()
    model = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(r=4, target_modules="all-linear", **kwargs))
    randomize_lora_b(model, seed)
    return base, model


def test_add_freezes_everything_but_the_adapter() -> None:
    _, model = _adapted()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    assert not any("lm_head" in n for n in trainable), "all-linear skips the output head"


def test_default_targets_by_model_type() -> None:
    llama = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig())
    wrapped = {n.rsplit(".", 1)[-1] for n, m in llama.named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == {"q_proj", "v_proj"}
    gpt2 = lorakit.add_adapter(tiny_gpt2(), lorakit.LoraConfig())
    wrapped = {n.rsplit(".", 1)[-1] for n, m in gpt2.named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == {"c_attn"}


def test_merged_equals_unmerged_equals_unloaded_and_disabled_equals_base() -> None:
    base, model = _adapted()
    unmerged = _logits(model)
    assert (unmerged - _logits(base)).abs().max() > 1e-3
    with lorakit.disable_adapters(model):
        torch.testing.assert_close(_logits(model), _logits(base), atol=1e-6, rtol=0)
    lorakit.merge_adapters(model)
    torch.testing.assert_close(_logits(model), unmerged, atol=1e-5, rtol=0)
    with lorakit.disable_adapters(model):  # disabling a merged model takes the merge out for the block
        torch.testing.assert_close(_logits(model), _logits(base), atol=1e-5, rtol=0)
    torch.testing.assert_close(_logits(model), unmerged, atol=1e-5, rtol=0)
    lorakit.unmerge_adapters(model)
    torch.testing.assert_close(_logits(model), unmerged, atol=1e-5, rtol=0)
    plain = lorakit.unload(model, merge=True)
    assert not any(isinstance(m, LoraLayer) for m in plain.modules())
    assert type(plain.model.layers[0].self_attn.q_proj) is nn.Linear
    torch.testing.assert_close(_logits(plain), unmerged, atol=1e-5, rtol=0)


def test_unload_without_merge_gives_back_the_base() -> None:
    base, model = _adapted()
    plain = lorakit.unload(model, merge=False)
    torch.testing.assert_close(_logits(plain), _logits(base), atol=1e-6, rtol=0)


def test_second_adapter_adds_alongside_and_set_adapters_combines() -> None:
    base, model = _adapted(seed=1)
    only_a = _logits(model)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj", "o_proj"]), name="b")
    randomize_lora_b(model, seed=2)  # re-randomises "default" too: measure it again
    lorakit.set_adapters(model, ["default"])
    only_a = _logits(model)
    lorakit.set_adapters(model, ["b"])
    only_b = _logits(model)
    lorakit.set_adapters(model, ["default", "b"])
    both = _logits(model)
    base_out = _logits(base)
    # Deltas add exactly in each layer; through the network they do not, so compare against a merged copy.
    assert (both - only_a).abs().max() > 1e-4 and (both - only_b).abs().max() > 1e-4
    merged = copy.deepcopy(model)
    lorakit.merge_adapters(merged, ["default", "b"])
    torch.testing.assert_close(_logits(merged), both, atol=1e-5, rtol=0)
    assert (base_out - both).abs().max() > 1e-3


def test_delete_adapter_restores_plain_modules() -> None:
    base, model = _adapted()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"]), name="b")
    lorakit.delete_adapter(model, "default")
    assert type(model.model.layers[0].mlp.up_proj) is nn.Linear  # only "default" adapted it
    assert isinstance(model.model.layers[0].self_attn.q_proj, LoraLayer)
    lorakit.delete_adapter(model, "b")
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    torch.testing.assert_close(_logits(model), _logits(base), atol=1e-6, rtol=0)


def test_unknown_adapter_names_the_known_ones() -> None:
    _, model = _adapted()
    with pytest.raises(lorakit.AdapterError, match=r"unknown adapter 'nope'.*'default'"):
        lorakit.set_adapters(model, ["nope"])
    with pytest.raises(lorakit.AdapterError, match="unknown adapter"):
        lorakit.delete_adapter(model, "nope")


def test_targets_matching_nothing_list_candidates() -> None:
    with pytest.raises(lorakit.AdapterError, match=r"matched no module.*candidates:.*q_proj"):
        lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(target_modules=["query"]))


def test_unsupported_target_type_is_named() -> None:
    with pytest.raises(lorakit.AdapterError, match="LlamaRMSNorm"):
        lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(target_modules=["input_layernorm"]))


def test_duplicate_adapter_name_is_refused() -> None:
    _, model = _adapted()
    with pytest.raises(lorakit.AdapterError, match="already exists"):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["q_proj"]))


@pytest.mark.parametrize("name", ["half", "to", "a.b", ""])
def test_adapter_names_that_cannot_key_a_module_dict_are_refused(name: str) -> None:
    # nn.ModuleDict("half") would shadow Module.half, and "." splits a state-dict key: both broke deep inside torch.
    with pytest.raises(lorakit.AdapterError, match="adapter name"):
        lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(target_modules=["q_proj"]), name=name)


def test_safe_merge_refuses_non_finite() -> None:
    _, model = _adapted()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.lora_B["default"].weight[0, 0] = float("inf")
    with pytest.raises(lorakit.AdapterError, match=r"down_proj.*non-finite"):
        lorakit.merge_adapters(model, safe=True)


@pytest.mark.parametrize(("bias", "expected"), [("none", 0), ("lora_only", 3), ("all", 4)])
def test_bias_modes_train_the_right_biases(bias: str, expected: int) -> None:
    model = lorakit.add_adapter(Toy(), lorakit.LoraConfig(target_modules=["conv1", "conv2", "lin"], bias=bias))
    trained = [n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    assert len(trained) == expected, trained


def test_gradients_flow_only_into_the_adapter() -> None:
    _, model = _adapted()
    model.train()
    model(X, labels=X).loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in grads)
