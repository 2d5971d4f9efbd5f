"""Adapters as peft 0.21's ``save_pretrained`` writes them by default, beside the plain LoRA tensors: the base
weights of targeted embeddings (``save_embedding_layers="auto"``), ``modules_to_save`` on tied embeddings, and both
embeddings' whole weights after a vocabulary resize. Both directions, against the real peft package."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import lorakit
from tests.tiny import logits_of, randomize_lora_b, tiny_llama, token_ids


def tied_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


# (id, base factory, config kwargs, the non-LoRA key peft's default save writes)
CASES: list[tuple[str, Callable[[], nn.Module], dict, str]] = [
    ("embed", tiny_llama, {"target_modules": ["embed_tokens", "o_proj"]}, "model.embed_tokens.base_layer.weight"),
    ("embed-tied", tied_llama, {"target_modules": ["embed_tokens", "o_proj"]}, "model.embed_tokens.base_layer.weight"),
    ("embed-regex", tiny_llama, {"target_modules": r".*\.(embed_tokens|q_proj)"},
     "model.embed_tokens.base_layer.weight"),
    ("lm_head", tiny_llama, {"target_modules": ["lm_head", "q_proj"]}, "lm_head.base_layer.weight"),
    ("lm_head-tied", tied_llama, {"target_modules": ["lm_head", "q_proj"]}, "lm_head.base_layer.weight"),
    ("save-embed-tied", tied_llama, {"target_modules": ["q_proj"], "modules_to_save": ["embed_tokens"]},
     "model.embed_tokens.weight"),
    ("save-lm_head-tied", tied_llama, {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
     "lm_head.weight"),
]  # fmt: skip
IDS = [c[0] for c in CASES]


def _peft_model(base: nn.Module, kwargs: dict) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that it saves the embeddings and about tied layers
        model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(init_lora_weights=False, **kwargs))
    with torch.no_grad():  # the modules_to_save copies must differ from the base
        for name, param in model.named_parameters():
            if param.requires_grad and "lora_" not in name:
                param.add_(0.1)
    return model.eval()


@pytest.mark.parametrize(("name", "factory", "kwargs", "saved_key"), CASES, ids=IDS)
def test_peft_default_save_loads_in_lorakit(name, factory, kwargs, saved_key, tmp_path: Path) -> None:
    base, x = factory(), token_ids()
    theirs = _peft_model(base, kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.save_pretrained(tmp_path)  # peft's defaults
    plain = {k for k in load_file(tmp_path / "adapter_model.safetensors") if "lora_" not in k}
    assert plain == {"base_model.model." + saved_key}, "peft's default save changed: update this test's cases"

    ours = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    expected = logits_of(theirs, x)
    assert (expected - logits_of(base, x)).abs().max() > 1e-3
    torch.testing.assert_close(logits_of(ours, x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "factory", "kwargs", "saved_key"), CASES, ids=IDS)
def test_lorakit_save_loads_in_peft(name, factory, kwargs, saved_key, tmp_path: Path) -> None:
    base, x = factory(), token_ids()
    ours = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(**kwargs))
    randomize_lora_b(ours)
    with torch.no_grad():
        for pname, param in ours.named_parameters():
            if param.requires_grad and "lora_" not in pname:
                param.add_(0.1)
    lorakit.save_adapter(ours, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    expected = logits_of(theirs, x)
    assert (expected - logits_of(base, x)).abs().max() > 1e-3
    torch.testing.assert_close(logits_of(ours, x), expected, atol=1e-5, rtol=0)


def test_saved_embedding_base_weight_is_loaded_into_the_base_as_peft_does(tmp_path: Path) -> None:
    """The saved base weight is not just tolerated: like peft, lorakit writes it into the base embedding."""
    base, x = tiny_llama(), token_ids()
    theirs = _peft_model(base, {"target_modules": ["embed_tokens", "o_proj"]})
    with torch.no_grad():
        theirs.base_model.model.model.embed_tokens.base_layer.weight.mul_(1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.save_pretrained(tmp_path)
        reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    ours = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    expected = logits_of(theirs, x)
    torch.testing.assert_close(logits_of(reloaded, x), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits_of(ours, x), expected, atol=1e-5, rtol=0)


def test_resized_vocabulary_embeddings_load_into_a_resized_base_and_are_refused_otherwise(tmp_path: Path) -> None:
    """After ``resize_token_embeddings`` peft saves both embeddings whole (it compares the vocabulary with the base
    folder's config.json); as with peft, the base must be resized before loading."""
    from transformers import AutoModelForCausalLM

    tiny_llama().save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    resized = copy.deepcopy(base)
    resized.resize_token_embeddings(101, mean_resizing=False)
    theirs = _peft_model(resized, {"target_modules": ["q_proj"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.save_pretrained(tmp_path / "adapter")
    saved = {k: tuple(v.shape) for k, v in load_file(tmp_path / "adapter" / "adapter_model.safetensors").items()}
    assert saved["base_model.model.model.embed_tokens.weight"] == (101, 32)

    x = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(3))
    ours = lorakit.load_adapter(copy.deepcopy(resized), tmp_path / "adapter")
    torch.testing.assert_close(logits_of(ours, x), logits_of(theirs, x), atol=1e-5, rtol=0)

    with pytest.raises(lorakit.AdapterError, match=r"has shape \(101, 32\) but the base model's is \(97, 32\)"):
        lorakit.load_adapter(copy.deepcopy(base), tmp_path / "adapter")
