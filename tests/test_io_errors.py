"""Adapter files that cannot be used: one clear message each, and the model left as it was."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import lorakit
from lorakit.layers import LoraLayer
from tests.tiny import tiny_gpt2, tiny_llama


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    return lorakit.save_adapter(model, tmp_path / "adapter")


def _untouched(model: torch.nn.Module) -> bool:
    return not any(isinstance(m, LoraLayer) for m in model.modules())


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(lorakit.AdapterError, match="no such adapter folder"):
        lorakit.load_adapter(tiny_llama(), tmp_path / "nope")


def test_legacy_pickle_is_refused_with_a_conversion_hint(saved: Path) -> None:
    (saved / "adapter_model.safetensors").rename(saved / "adapter_model.bin")
    with pytest.raises(lorakit.AdapterError, match=r"refusing to load a pickled adapter.*save_file"):
        lorakit.load_adapter(tiny_llama(), saved)


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_safetensors(saved: Path, cut: float) -> None:
    file = saved / "adapter_model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * cut)])
    model = tiny_llama()
    with pytest.raises(lorakit.AdapterError, match="corrupt or truncated safetensors"):
        lorakit.load_adapter(model, saved)
    assert _untouched(model)


def test_garbage_safetensors(saved: Path) -> None:
    (saved / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(lorakit.AdapterError, match="corrupt or truncated"):
        lorakit.load_adapter(tiny_llama(), saved)


def test_config_field_of_wrong_type(saved: Path) -> None:
    config = json.loads((saved / "adapter_config.json").read_text())
    config["r"] = "eight"
    (saved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(lorakit.AdapterError, match=r"adapter_config.json: LoraConfig.r must be a positive integer"):
        lorakit.load_adapter(tiny_llama(), saved)


def test_config_not_json(saved: Path) -> None:
    (saved / "adapter_config.json").write_text("{not json")
    with pytest.raises(lorakit.AdapterError, match="not valid JSON"):
        lorakit.load_adapter(tiny_llama(), saved)


def test_unknown_method_is_named(saved: Path) -> None:
    (saved / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(lorakit.AdapterError, match="PREFIX_TUNING"):
        lorakit.load_adapter(tiny_llama(), saved)


def test_adapter_for_another_base_names_module_and_shapes(saved: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=97,
            hidden_size=48,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(lorakit.AdapterError, match=r"model.layers.0.self_attn.q_proj.*\(2, 32\).*\(2, 48\)"):
        lorakit.load_adapter(wider, saved)
    assert _untouched(wider), "a failed load leaves no half-added adapter"


def test_adapter_for_another_architecture_names_the_module(saved: Path) -> None:
    with pytest.raises(lorakit.AdapterError, match=r"module 'model.layers.0.self_attn.q_proj'.*another base model"):
        lorakit.load_adapter(tiny_gpt2(), saved)


def test_load_into_existing_adapter_overwrites_weights(saved: Path) -> None:
    base = tiny_llama()
    model = lorakit.load_adapter(copy.deepcopy(base), saved, trainable=True)
    assert lorakit.count_parameters(model)[0] > 0
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.zero_()
    lorakit.load_adapter(model, saved)
    assert model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.abs().sum() > 0


def test_save_adapter_writes_the_whole_tensors_it_is_given_and_refuses_a_shard(tmp_path: Path) -> None:
    """``tensors=``: an FSDP2 run's adapter gathered from the shards is written in place of the model's own."""
    from safetensors.torch import load_file

    model = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(r=2, target_modules=["q_proj"]))
    own = lorakit.io.adapter_tensors(model, "default")
    given = {k: torch.full_like(v, 0.5) for k, v in own.items()}
    folder = lorakit.save_adapter(model, tmp_path / "adapter", tensors=given)
    written = load_file(folder / "adapter_model.safetensors")
    assert sorted(written) == sorted(own) and all(torch.equal(written[k], given[k]) for k in own)
    key = next(k for k in own if k.endswith("lora_B.weight"))
    with pytest.raises(lorakit.AdapterError, match=r"q_proj: tensor to save has shape \(\d+, 2\), the adapter's"):
        lorakit.save_adapter(model, tmp_path / "shard", tensors={**given, key: given[key][:2]})
    with pytest.raises(lorakit.AdapterError, match="do not match the adapter's keys"):
        lorakit.save_adapter(model, tmp_path / "missing", tensors={k: v for k, v in given.items() if k != key})
