"""QLoRA end to end on a tiny Llama: training, merging into de-quantised weights, peft loading, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM

import lorakit
from lorakit.cli import main
from lorakit.quant import QuantLinear, dequantize, dequantize_model, quantize_model, quantized_modules
from lorakit.quant.backends import quantize_weight
from lorakit.runs.origin import trained_quantization
from lorakit.train.config import TrainConfig
from tests.tiny import randomize_lora_b, tiny_llama

CONFIG = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}


def _ids() -> torch.Tensor:
    return torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3))


def _inner(weight: torch.Tensor) -> list[torch.Tensor]:
    names, _ = type(weight).__tensor_flatten__(weight)  # type: ignore[attr-defined]
    return [getattr(weight, n).clone() for n in names]


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_qlora_trains_only_the_adapter_and_the_base_stays_quantised(scheme: str) -> None:
    model = tiny_llama()
    quantize_model(model, scheme)
    before = {name: _inner(layer.weight) for name, layer in quantized_modules(model).items()}
    lorakit.add_adapter(model, lorakit.LoraConfig(**CONFIG))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = _ids()
    model.train()
    losses = []
    for _ in range(8):
        loss = model(x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1, losses
    after = quantized_modules(model)
    assert after.keys() == {name + ".base_layer" for name in before}  # each one now wrapped by LoRA
    for name, layer in after.items():
        assert layer.weight.dtype == torch.float32 and not layer.weight.requires_grad
        original = before[name.removesuffix(".base_layer")]
        assert all(torch.equal(a, b) for a, b in zip(_inner(layer.weight), original, strict=True))


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_merge_adds_the_delta_to_the_dequantized_weight(scheme: str) -> None:
    model = tiny_llama()
    quantize_model(model, scheme)
    lorakit.add_adapter(model, lorakit.LoraConfig(**CONFIG))
    randomize_lora_b(model)
    layer = model.model.layers[1].mlp.down_proj
    assert isinstance(layer.base_layer, QuantLinear)
    a, b = layer.lora_A["default"].weight.double(), layer.lora_B["default"].weight.double()
    expected = dequantize(layer.base_layer.weight).double() + (8 / 4) * b @ a  # float64 reference
    x = _ids()
    with torch.no_grad():
        unmerged = model(x).logits
        lorakit.merge_adapters(model)
        merged = model(x).logits
    assert type(layer.base_layer) is torch.nn.Linear  # a float copy now; the sum was not re-quantised
    assert layer.base_layer.weight.dtype == torch.float32
    torch.testing.assert_close(layer.base_layer.weight.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    # Re-quantising the sum would have moved it: the test above would see it.
    requantised = dequantize(quantize_weight(expected.float(), scheme)).double()
    assert (requantised - expected).abs().max() > 1e-4


def test_qlora_adapter_loads_in_peft_on_the_unquantised_base(tmp_path: Path) -> None:
    base = tiny_llama()
    quantized = copy.deepcopy(base)
    quantize_model(quantized, "nf4")
    lorakit.add_adapter(quantized, lorakit.LoraConfig(**CONFIG))
    randomize_lora_b(quantized)
    lorakit.save_adapter(quantized, tmp_path)
    ours = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    x = _ids()
    with torch.no_grad():
        expected, got, plain = theirs(x).logits, ours(x).logits, base(x).logits
    assert (expected - plain).abs().max() > 1e-3, "the adapter must change the output"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_train_method_qlora_then_merge_on_the_quantised_base(
    tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, merged = tmp_path / "run", tmp_path / "merged"
    assert main(["train", "--method", "qlora", "--bits", "8", "--model", str(tiny_model_dir), "--data",
                 str(small_chat_data), "--output", str(out), "--max-steps", "3", "--batch-size", "2", "--r", "4",
                 "--lr", "1e-2", "--precision", "fp32"]) == 0  # fmt: skip
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == 4
    assert json.loads((out / "train_config.json").read_text())["bits"] == 8
    # No --quantize: the run's train_config.json says int8, so the base is quantised as in training.
    assert main(["merge", "--model", str(tiny_model_dir), "--adapter", str(out), "--output", str(merged)]) == 0
    said = capsys.readouterr()
    assert "trained by QLoRA on a int8 base" in said.err and "de-quantised float32 copy" in said.out
    plain = AutoModelForCausalLM.from_pretrained(merged)
    assert next(plain.parameters()).dtype == torch.float32
    # The merged model computes what the de-quantised base plus the unmerged adapter computes, in float32.
    reference, _ = lorakit.load_model(str(tiny_model_dir), quantize="int8")
    assert len(dequantize_model(reference, torch.float32)) == 2 * 7
    lorakit.load_adapter(reference.float(), out)
    ids = torch.tensor([[1, 5, 9, 200, 3000, 7]])
    with torch.no_grad():
        got, expected = plain(ids).logits, reference(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # --quantize none: merged into the float base instead (int8's rounding is not in its weights).
    assert main(["merge", "--quantize", "none", "--model", str(tiny_model_dir), "--adapter", str(out),
                 "--output", str(tmp_path / "float")]) == 0  # fmt: skip
    assert "de-quantised" not in capsys.readouterr().out
    weight = "model.layers.0.mlp.down_proj.weight"
    on_float = AutoModelForCausalLM.from_pretrained(tmp_path / "float").state_dict()[weight]
    assert (on_float - plain.state_dict()[weight]).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"bits": 5, "method": "qlora"}, "--bits must be 4 or 8"), ({"bits": 8}, "--bits 8 needs --method qlora"),
     ({"method": "qlora2"}, "--method must be one of")],
)  # fmt: skip
def test_config_errors_name_the_flag(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_quantize_before_adapters_only() -> None:
    model = lorakit.add_adapter(tiny_llama(), lorakit.LoraConfig(**CONFIG))
    with pytest.raises(ValueError, match="before adding LoRA adapters"):
        quantize_model(model, "nf4")


def test_trained_quantization_reads_the_runs_train_config(tmp_path: Path) -> None:
    run, other = tmp_path / "run", tmp_path / "other"
    (run / "initial_adapter").mkdir(parents=True)
    other.mkdir()
    assert trained_quantization(run) is None, "no train_config.json: not known to be QLoRA"
    (run / "train_config.json").write_text(json.dumps(TrainConfig(method="qlora").to_dict()))
    assert trained_quantization(run) == "nf4"
    assert trained_quantization(run / "initial_adapter") == "nf4", "an adapter folder inside the run"
    (run / "train_config.json").write_text(json.dumps(TrainConfig(method="qlora", bits=8).to_dict()))
    assert trained_quantization(run) == "int8"
    (other / "train_config.json").write_text(json.dumps(TrainConfig(method="lora").to_dict()))
    assert trained_quantization(other) is None
    (other / "train_config.json").write_text("{not json")
    assert trained_quantization(other) is None
