"""lorakit plan: exact trainable counts (against peft and hand arithmetic), published anchors, measured memory."""

from __future__ import annotations

import json

import peft
import pytest
import torch

from lorakit.cli import main
from lorakit.plan import PlanSettings, count_trainable, meta_model, model_config, plan_methods, targets_of
from tests.tiny import tiny_gpt2, tiny_llama

# Measured with `python bench/plan_memory.py` (lorakit train --max-steps 3, built-in model, LoRA r=16 on
# all-linear, batch 8, frozen base stored and computed in bf16 = plan's --precision bf16, largest micro-batch
# 8 x 180 tokens with 500 label tokens) on the idle 2-core development machine: peak RSS during the steps minus
# the runtime's RSS (imports, tokenizer, data; no model).
MEASURED_TRAINING_BYTES = 1_925_000_000  # 2,295 MB peak RSS during the steps - 370 MB runtime
MEASURED_BATCH = (8, 180, 500)


def test_gpt3_175b_matches_hu_et_al() -> None:
    """LoRA paper (Hu et al. 2021): r=4 on Wq and Wv of GPT-3 175B = 18.9M trainable parameters."""
    s = PlanSettings(r=4, target_modules="q_proj,v_proj", precision="fp16", batch_size=1, seq_len=2048)
    _, base, plans = plan_methods("gpt3-175b", s)
    assert plans["lora"].trainable == 96 * 2 * 4 * (12288 + 12288) == 18_874_368
    assert abs(base - 175e9) / 175e9 < 0.03
    assert abs(plans["lora"].memory.weights - 350e9) / 350e9 < 0.02, "fp16 weights ~350 GB"
    assert plans["full"].memory.total / plans["lora"].memory.total >= 3
    assert plans["lora"].adapter_bytes < 40e6, "checkpoint ~35 MB instead of 350 GB"
    assert plans["qlora"].memory.weights < plans["lora"].memory.weights / 3


@pytest.mark.parametrize(("preset", "published"), [("llama-3-8b", 8.03e9), ("llama-2-70b", 68.98e9)])
def test_presets_have_their_published_size(preset: str, published: float) -> None:
    total = sum(p.numel() for p in meta_model(model_config(preset)).parameters())
    assert abs(total - published) / published < 0.01


def test_smollm2_preset_is_the_builtin_model(smollm2) -> None:  # type: ignore[no-untyped-def]
    model, _ = smollm2
    _, base, plans = plan_methods("smollm2-135m", PlanSettings())
    assert base == sum(p.numel() for p in model.parameters())
    assert plans["lora"].trainable == 4_884_480, "what lorakit train logs for r=16 on all-linear"


def _peft_trainable(model: torch.nn.Module, config: object) -> int:
    wrapped = peft.get_peft_model(model, config)  # type: ignore[arg-type]
    return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def test_trainable_counts_match_peft() -> None:
    llama = tiny_llama()
    for method, r in (("lora", 4), ("dora", 8)):
        targets = targets_of(llama, method, "all-linear")  # type: ignore[arg-type]
        reference = peft.LoraConfig(r=r, target_modules="all-linear", use_dora=method == "dora")
        assert count_trainable(llama, method, targets, r) == _peft_trainable(tiny_llama(), reference)  # type: ignore[arg-type]
    targets = targets_of(llama, "ia3", "all-linear")
    ia3 = peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
    assert count_trainable(llama, "ia3", targets, 1) == _peft_trainable(tiny_llama(), ia3)
    gpt2 = tiny_gpt2()
    targets = targets_of(gpt2, "lora", "c_attn,c_fc")
    reference = peft.LoraConfig(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    assert count_trainable(gpt2, "lora", targets, 4) == _peft_trainable(tiny_gpt2(), reference)
    assert count_trainable(gpt2, "full", [], 4) == sum(p.numel() for p in tiny_gpt2().parameters())


def test_smollm2_estimate_is_within_25_percent_of_measured_rss() -> None:
    rows, length, labels = MEASURED_BATCH
    s = PlanSettings(r=16, batch_size=rows, seq_len=length, label_fraction=labels / (rows * length), precision="bf16")
    estimate = plan_methods(None, s, ("lora",))[2]["lora"].memory.total
    assert abs(estimate - MEASURED_TRAINING_BYTES) / MEASURED_TRAINING_BYTES <= 0.25


def test_cli_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "smollm2-135m", "--method", "full", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"model", "method", "trainable_params", "total_params", "adapter_bytes", "memory"}
    assert out["trainable_params"] == out["total_params"]
    assert set(out["memory"]) == {"full", "lora", "dora", "qlora", "ia3"}
    for part in out["memory"].values():
        assert part["total"] == part["weights"] + part["gradients"] + part["optimizer"] + part["activations"]
    assert main(["plan", "--model", "no-such-model"]) == 2
    assert "not a preset" in capsys.readouterr().err
