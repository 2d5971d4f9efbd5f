"""``lorakit train --method dora|ia3`` end to end on a tiny model (files that peft loads with equal logits),
and LoRA+'s learning rate for B."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import lorakit
from lorakit.cli import main
from lorakit.config import IA3Config, LoraConfig
from lorakit.io import adapter_tensors
from lorakit.train.config import TrainConfig
from lorakit.train.optim import build_optimizer
from tests.tiny import tiny_llama


@pytest.mark.parametrize(("method", "peft_type", "key"), [("dora", "LORA", "lora_magnitude_vector"),
                                                          ("ia3", "IA3", "ia3_l")])  # fmt: skip
def test_train_method_from_the_cli(
    method: str, peft_type: str, key: str, tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / method
    argv = ["train", "--method", method, "--model", str(tiny_model_dir), "--data", str(small_chat_data),
            "--output", str(out), "--max-steps", "3", "--batch-size", "4", "--lr", "1e-2", "--r", "4",
            "--precision", "fp32", "--seq-len", "128", "--warmup-steps", "0"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == peft_type and config.get("use_dora", method == "dora") == (method == "dora")
    x = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        plain = base(x).logits
        theirs = peft.PeftModel.from_pretrained(base, out).eval()
        want = theirs(x).logits
        ours = lorakit.load_adapter(lorakit.load_model(str(tiny_model_dir))[0], out).eval()
        got = ours(x).logits
    assert any(key in name for name, _ in ours.named_parameters())
    assert (want - plain).abs().max() > 1e-4, "training moved the adapter"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_adapter_config_per_method() -> None:
    assert TrainConfig().adapter_config() == TrainConfig().lora_config()
    dora = TrainConfig(method="dora").adapter_config()
    assert isinstance(dora, LoraConfig) and dora.use_dora
    assert TrainConfig(method="ia3").adapter_config() == IA3Config(task_type="CAUSAL_LM")  # peft's defaults
    ia3 = TrainConfig(method="ia3", target_modules="k_proj,down_proj").adapter_config()
    assert isinstance(ia3, IA3Config) and ia3.feedforward_modules == ("down_proj",)
    with pytest.raises(ValueError, match="--method must be one of lora, dora, ia3"):
        TrainConfig(method="adalora")  # type: ignore[arg-type]


def test_loraplus_gives_b_ratio_times_the_learning_rate() -> None:
    """Adam's first step moves every weight by lr (m / sqrt(v) = sign(g)): B moves ratio x as far as A."""
    model = lorakit.add_adapter(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    config = TrainConfig(lr=1e-3, loraplus_lr_ratio=16.0, weight_decay=0.0)
    optimizer = build_optimizer(model, config)
    lrs = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    x = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    model(x, labels=x).loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        want = 16e-3 if ".lora_B." in name else 1e-3
        assert lrs[id(param)] == pytest.approx(want)
        assert param.grad is not None
        clear = param.grad.abs() > 1e-5  # where Adam's eps (1e-8) is negligible next to |g|
        moved = (param.detach() - before[name]).abs()[clear]
        assert moved.numel() > param.numel() // 2
        torch.testing.assert_close(moved, torch.full_like(moved, want), rtol=1e-3, atol=0)


def test_rslora_and_pissa_from_the_cli(tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path) -> None:
    """A PiSSA run changes the base while it trains; the adapter it saves is converted for the ORIGINAL base.

    Reference: the trained state (PiSSA-modified base + the last checkpoint's unconverted adapter, rebuilt from the
    same deterministic SVD) must give the logits peft gives for the unmodified base + the saved adapter.
    """
    out = tmp_path / "pissa"
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(small_chat_data), "--output", str(out),
            "--max-steps", "3", "--batch-size", "4", "--lr", "1e-2", "--r", "4", "--precision", "fp32",
            "--seq-len", "128", "--warmup-steps", "0", "--save-every", "3", "--use-rslora",
            "--init-lora-weights", "pissa", "--target-modules", "q_proj,v_proj"]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["use_rslora"] and saved["init_lora_weights"] is True and saved["r"] == 8  # plain, rank 2r
    x = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trained, _ = lorakit.load_model(str(tiny_model_dir))
        config = TrainConfig(r=4, use_rslora=True, init_lora_weights="pissa", target_modules="q_proj,v_proj")
        lorakit.add_adapter(trained, config.lora_config())  # the same PiSSA base as in training
        weights = load_file(out / "checkpoints" / "step-000003" / "adapter_model.safetensors")
        for key, param in adapter_tensors(trained, "default").items():
            param.copy_(weights[key])  # the trained, unconverted adapter
        want = trained(x).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        plain = base(x).logits
        got = peft.PeftModel.from_pretrained(base, out).eval()(x).logits
    assert (want - plain).abs().max() > 1e-4, "training moved the adapter"
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_init_lora_weights_flag_is_checked() -> None:
    assert TrainConfig(init_lora_weights="false").lora_config().init_lora_weights is False
    assert TrainConfig(init_lora_weights="pissa_niter_4").converts_on_save()
    with pytest.raises(ValueError, match="--init-lora-weights must be"):
        TrainConfig(init_lora_weights="svd")
