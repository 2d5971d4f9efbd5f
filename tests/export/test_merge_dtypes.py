"""``lorakit merge --dtype``: the float32 merge, rounded once to the saved precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from lorakit.cli import main
from tests.tiny import cli_error_line


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = lorakit.load_model(str(tiny_model_dir))
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    return lorakit.save_adapter(model, tmp_path_factory.mktemp("merge-dtypes") / "adapter")


def _merge(tiny_model_dir: Path, adapter: Path, out: Path, *extra: str) -> dict[str, torch.Tensor]:
    assert main(["merge", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--output", str(out),
                 *extra]) == 0  # fmt: skip
    return load_file(out / "model.safetensors")


@pytest.mark.parametrize(("flag", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_merged_weights_are_the_float32_merge_rounded_once(flag, dtype, tiny_model_dir, adapter_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    reference = _merge(tiny_model_dir, adapter_dir, tmp_path / "fp32")
    assert {t.dtype for t in reference.values()} == {torch.float32}
    merged = _merge(tiny_model_dir, adapter_dir, tmp_path / flag, "--dtype", flag)
    assert merged.keys() == reference.keys()
    for key, value in merged.items():
        assert value.dtype == dtype, key
        assert torch.equal(value, reference[key].to(dtype)), key  # one rounding of the float32 sum
    config = json.loads((tmp_path / flag / "config.json").read_text())
    assert config["dtype"] == str(dtype).removeprefix("torch.")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / flag, dtype="auto")
    assert next(plain.parameters()).dtype == dtype


def test_unknown_merge_dtype_is_one_line(capsys, tmp_path: Path) -> None:
    line = cli_error_line(capsys, ["merge", "--adapter", str(tmp_path), "--output", "x", "--dtype", "q4"])
    assert "--dtype" in line and "fp16" in line
