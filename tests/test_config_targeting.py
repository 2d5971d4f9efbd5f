"""LoraConfig validation and module selection, the latter against peft's own matcher."""

from __future__ import annotations

import peft
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key

from lorakit import LoraConfig
from lorakit.targeting import is_selected

NAMES = [
    "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.12.mlp.down_proj",
    "transformer.h.3.attn.c_attn", "transformer.h.3.mlp.c_proj", "lm_head", "q_proj", "encoder.block.2.q_proj",
    "model.layers.0.experts.3.q_proj", "model.vision.layers.1.q_proj",
]  # fmt: skip
TARGETS = [
    ["q_proj"], ["q_proj", "down_proj"], ["self_attn.q_proj"], ["c_attn", "c_proj"], ["lm_head"],
    r".*\.q_proj", r"model\.layers\.\d+\.(self_attn\.q_proj|mlp\.down_proj)", "q_proj",
]  # fmt: skip


@settings(deadline=None)
@given(
    name=st.sampled_from(NAMES),
    targets=st.sampled_from(TARGETS),
    layers=st.sampled_from([None, [0], [1, 3], [12]]),
    pattern=st.sampled_from([None, ["layers"], ["h"], ["layers", "h"]]),
    exclude=st.sampled_from([None, ["down_proj"], r".*experts.*"]),
)
def test_selection_agrees_with_peft(name, targets, layers, pattern, exclude) -> None:
    kwargs = {"target_modules": targets, "layers_to_transform": layers, "layers_pattern": pattern,
              "exclude_modules": exclude}  # fmt: skip
    try:
        theirs = peft.LoraConfig(**kwargs)
    except ValueError:  # combinations peft refuses, lorakit refuses too
        with pytest.raises(ValueError, match="LoraConfig.layers_"):
            LoraConfig(**kwargs)
        return
    ours = LoraConfig(**kwargs)
    reference = check_target_module_exists(theirs, name)
    assert is_selected(ours, name) == (bool(reference) and type(reference).__name__ != "_ExcludedModule")


@pytest.mark.parametrize("name", NAMES)
def test_rank_pattern_lookup_agrees_with_peft(name: str) -> None:
    pattern = {"q_proj": 2, r"layers\.12\.mlp\.down_proj": 5, "c_.*": 7}
    config = LoraConfig(r=8, lora_alpha=16, rank_pattern=pattern, alpha_pattern={"q_proj": 3})
    key = get_pattern_key(list(pattern), name)
    assert config.rank_and_alpha(name)[0] == pattern.get(key, 8)
    key = get_pattern_key(["q_proj"], name)
    assert config.rank_and_alpha(name)[1] == {"q_proj": 3}.get(key, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "LoraConfig.r must be a positive integer"),
        ({"r": 2.5}, "LoraConfig.r"),
        ({"lora_dropout": 1.0}, r"LoraConfig.lora_dropout must be a number in \[0, 1\)"),
        ({"bias": "some"}, "LoraConfig.bias must be one of 'none', 'all', 'lora_only'"),
        ({"init_lora_weights": "pisa"}, "LoraConfig.init_lora_weights must be True, False, 'gaussian', 'pissa'"),
        ({"init_lora_weights": "pissa_niter_0"}, "LoraConfig.init_lora_weights"),
        ({"target_modules": [1, 2]}, "LoraConfig.target_modules"),
        ({"rank_pattern": {"q": -1}}, "LoraConfig.rank_pattern"),
        ({"layers_to_transform": ["a"]}, "LoraConfig.layers_to_transform"),
        ({"fan_in_fan_out": "yes"}, "LoraConfig.fan_in_fan_out must be true or false"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoraConfig(**kwargs)


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match="unknown LoraConfig key 'lora_alfa' \\(did you mean 'lora_alpha'\\?\\)"):
        LoraConfig.from_dict({"lora_alfa": 16})


def test_peft_dict_round_trip_and_refusals() -> None:
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], rank_pattern={"q_proj": 2})
    assert LoraConfig.from_peft_dict(config.to_peft_dict()) == config
    with pytest.raises(ValueError, match="peft_type 'IA3'"):
        LoraConfig.from_peft_dict({"peft_type": "IA3"})
    with pytest.raises(ValueError, match="lora_bias"):
        LoraConfig.from_peft_dict({**config.to_peft_dict(), "lora_bias": True})
    assert LoraConfig.from_peft_dict({**config.to_peft_dict(), "use_dora": True}).use_dora
    # peft's own config dict reads (unknown bookkeeping keys pass)
    theirs = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]).to_dict()
    theirs["peft_type"] = "LORA"
    theirs["task_type"] = None
    assert LoraConfig.from_peft_dict(theirs).target_modules == ("q_proj",)
