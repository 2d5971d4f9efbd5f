"""Adapter files against the real peft package, both directions, on three tiny models."""

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
from tests.tiny import Toy, randomize_lora_b, tiny_gpt2, tiny_llama

# (name, model factory, input, lorakit/peft config kwargs)
CASES: list[tuple[str, Callable[[], nn.Module], Callable[[], torch.Tensor], dict]] = [
    ("llama", tiny_llama, lambda: torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3)),
     {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}),
    ("llama-patterns", tiny_llama, lambda: torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3)),
     {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj"], "rank_pattern": {"v_proj": 2},
      "alpha_pattern": {"down_proj": 3.0}, "layers_to_transform": [1], "use_rslora": True}),
    ("gpt2", tiny_gpt2, lambda: torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3)),
     {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj", "c_fc"], "fan_in_fan_out": True}),
    ("toy", Toy, lambda: torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(3)),
     {"r": 3, "lora_alpha": 6, "target_modules": ["emb", "conv1", "conv2", "lin"], "bias": "lora_only",
      "modules_to_save": ["head"]}),
]  # fmt: skip
IDS = [c[0] for c in CASES]


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


def _peft_config(kwargs: dict, **extra: object) -> peft.LoraConfig:
    return peft.LoraConfig(**kwargs, **extra)


@pytest.mark.parametrize(("name", "factory", "inputs", "kwargs"), CASES, ids=IDS)
def test_lorakit_saves_peft_loads_same_outputs(name, factory, inputs, kwargs, tmp_path: Path) -> None:
    base, x = factory(), inputs()
    ours = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(**kwargs))
    randomize_lora_b(ours)
    with torch.no_grad():  # the modules_to_save copy and trained biases must travel too
        for pname, param in ours.named_parameters():
            if param.requires_grad and "lora_" not in pname:
                param.add_(0.1)
    lorakit.save_adapter(ours, tmp_path)
    assert (tmp_path / "adapter_config.json").exists() and (tmp_path / "adapter_model.safetensors").exists()

    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    expected, got = _out(theirs, x), _out(ours, x)
    assert (expected - _out(base, x)).abs().max() > 1e-3, "the adapter must change the output"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "factory", "inputs", "kwargs"), CASES, ids=IDS)
def test_peft_saves_lorakit_loads_same_outputs(name, factory, inputs, kwargs, tmp_path: Path) -> None:
    base, x = factory(), inputs()
    theirs = peft.get_peft_model(copy.deepcopy(base), _peft_config(kwargs, init_lora_weights=False)).eval()
    with torch.no_grad():
        for pname, param in theirs.named_parameters():
            if param.requires_grad and "lora_" not in pname:
                param.add_(0.1)
    theirs.save_pretrained(tmp_path)

    ours = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    expected = _out(theirs, x)
    assert (expected - _out(base, x)).abs().max() > 1e-3
    torch.testing.assert_close(_out(ours, x), expected, atol=1e-5, rtol=0)
    # Loaded for inference: nothing trains unless asked.
    assert lorakit.count_parameters(ours)[0] == 0


@pytest.mark.parametrize(("name", "factory", "inputs", "kwargs"), CASES, ids=IDS)
def test_trainable_parameter_count_matches_peft(name, factory, inputs, kwargs) -> None:
    base = factory()
    ours = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(**kwargs))
    theirs = peft.get_peft_model(copy.deepcopy(base), _peft_config(kwargs))
    trainable, total = lorakit.count_parameters(ours)
    assert (trainable, total) == theirs.get_nb_trainable_parameters()
    assert 0 < trainable < total


@pytest.mark.parametrize(("name", "factory", "inputs", "kwargs"), CASES, ids=IDS)
def test_same_keys_and_shapes_as_peft(name, factory, inputs, kwargs, tmp_path: Path) -> None:
    base = factory()
    ours = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(**kwargs))
    lorakit.save_adapter(ours, tmp_path / "ours")
    theirs = peft.get_peft_model(copy.deepcopy(base), _peft_config(kwargs))
    theirs.save_pretrained(tmp_path / "peft")
    a = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    b = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}
    ours_cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    for key in ("peft_type", "r", "lora_alpha", "lora_dropout", "bias", "fan_in_fan_out", "use_rslora",
                "rank_pattern", "alpha_pattern", "layers_to_transform"):  # fmt: skip
        assert ours_cfg[key] == peft_cfg[key], key
    if isinstance(kwargs["target_modules"], list):  # peft 0.21 expands "all-linear" to full module paths
        assert sorted(ours_cfg["target_modules"]) == sorted(peft_cfg["target_modules"])
    assert list(ours_cfg) == sorted(ours_cfg), "keys are written sorted, as peft does"


def test_named_adapter_goes_to_subfolder_and_loads_in_peft(tmp_path: Path) -> None:
    base, x = tiny_llama(), torch.arange(9)[None]
    ours = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(r=2, target_modules=["q_proj"]), name="extra")
    randomize_lora_b(ours)
    folder = lorakit.save_adapter(ours, tmp_path, name="extra")
    assert folder == tmp_path / "extra"
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), folder, adapter_name="extra")
    torch.testing.assert_close(_out(ours, x), _out(theirs, x), atol=1e-5, rtol=0)
    # lorakit finds the sub-folder from the parent path too
    again = lorakit.load_adapter(copy.deepcopy(base), tmp_path, name="extra")
    torch.testing.assert_close(_out(again, x), _out(ours, x), atol=1e-6, rtol=0)
