"""``row_adapters``: each row of a mixed batch equals its adapter run alone, and peft's mixed-batch forward."""

from __future__ import annotations

import copy
from pathlib import Path

import peft
import pytest
import torch

import lorakit
from lorakit.errors import AdapterError
from tests.tiny import randomize_lora_b, tiny_gpt2, tiny_llama

# Different ranks, targets and an embedding adapter, so padding to r_max and "adapter absent here" are covered.
ADAPTERS = {
    "a": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
    "b": {"r": 8, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "use_rslora": True},
    "c": {"r": 2, "lora_alpha": 4, "target_modules": ["embed_tokens", "down_proj", "o_proj"]},
}
ROWS = ["a", "b", None, "c", "a"]


def _with_adapters(model: torch.nn.Module) -> torch.nn.Module:
    for seed, (name, kwargs) in enumerate(ADAPTERS.items(), start=1):
        lorakit.add_adapter(model, lorakit.LoraConfig(**kwargs, init_lora_weights=False), name)
        torch.manual_seed(seed)
        randomize_lora_b(model, seed)  # touches every adapter; later seeds change earlier ones too, harmlessly
    return model.eval()


def _ids(rows: int, length: int = 7, vocab: int = 97) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(3))


def _alone(model: torch.nn.Module, ids: torch.Tensor, rows: list[str | None]) -> torch.Tensor:
    """Reference: each row through the usual path with only its adapter active (or all disabled)."""
    outs = []
    for i, name in enumerate(rows):
        if name is None:
            with lorakit.disable_adapters(model):
                outs.append(model(ids[i : i + 1]).logits)
        else:
            lorakit.set_adapters(model, [name])
            outs.append(model(ids[i : i + 1]).logits)
    return torch.cat(outs)


@pytest.mark.parametrize("length", [7, 1])  # 1: the decode shape, which takes the masked path
def test_each_row_equals_its_adapter_alone(length: int) -> None:
    model = _with_adapters(tiny_llama())
    ids = _ids(len(ROWS), length)
    with torch.no_grad():
        expected = _alone(model, ids, ROWS)
        lorakit.set_adapters(model, ["b"])
        with lorakit.row_adapters(model, ROWS):
            mixed = model(ids).logits
        after = model(ids).logits  # the active adapter is back once the block ends
        only_b = _alone(model, ids, ["b"] * len(ROWS))
        base = _alone(model, ids, [None] * len(ROWS))
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, only_b, rtol=1e-5, atol=1e-5)
    # The adapters really differ from each other and from the base, so the comparison above can fail.
    assert (expected[0] - expected[1]).abs().max() > 0.1
    assert (expected[0] - base[0]).abs().max() > 0.1 and (expected[3] - base[3]).abs().max() > 0.1


def test_gpt2_conv1d_layers() -> None:
    model = tiny_gpt2()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False), "x")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["c_attn", "c_fc"], init_lora_weights=False), "y")
    randomize_lora_b(model)
    rows = ["y", None, "x"]
    ids = _ids(3)
    with torch.no_grad():
        expected = _alone(model, ids, rows)
        with lorakit.row_adapters(model, rows):
            mixed = model(ids).logits
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-5)


def test_same_as_peft_adapter_names(tmp_path: Path) -> None:
    base = tiny_llama()
    ours = _with_adapters(copy.deepcopy(base))
    for name in ADAPTERS:
        lorakit.save_adapter(ours, tmp_path / name, name)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "a" / "a", adapter_name="a")
    theirs.load_adapter(tmp_path / "b" / "b", adapter_name="b")
    theirs.load_adapter(tmp_path / "c" / "c", adapter_name="c")
    theirs.eval()
    ids = _ids(len(ROWS))
    with torch.no_grad():
        reference = theirs(input_ids=ids, adapter_names=[n or "__base__" for n in ROWS]).logits
        with lorakit.row_adapters(ours, ROWS):
            mixed = ours(ids).logits
    torch.testing.assert_close(mixed, reference, rtol=1e-5, atol=1e-5)


def test_errors() -> None:
    model = _with_adapters(tiny_llama())
    ids = _ids(2)
    with pytest.raises(AdapterError, match="unknown adapter 'zz'"), lorakit.row_adapters(model, ["a", "zz"]):
        pass
    with pytest.raises(ValueError, match="names 3 rows but the batch has 2"), lorakit.row_adapters(model, ["a"] * 3):
        model(ids)
    lorakit.merge_adapters(model, ["a"])
    with pytest.raises(AdapterError, match="unmerge"), lorakit.row_adapters(model, ["a", "b"]):
        pass
    dora = tiny_llama()
    lorakit.add_adapter(dora, lorakit.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True), "d")
    with pytest.raises(AdapterError, match="not a plain LoRA"), lorakit.row_adapters(dora, ["d"]):
        pass


def test_stack_follows_weight_changes() -> None:
    """Editing an adapter in place (training, load_adapter) must not leave a stale stack behind."""
    model = _with_adapters(tiny_llama())
    ids = _ids(2)
    with torch.no_grad():
        with lorakit.row_adapters(model, ["a", "b"]):
            before = model(ids).logits
        for name, param in model.named_parameters():
            if ".a." in name or name.endswith(".a"):
                param.mul_(2)
        with lorakit.row_adapters(model, ["a", "b"]):
            after = model(ids).logits
        expected = _alone(model, ids, ["a", "b"])
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert (after[0] - before[0]).abs().max() > 1e-3
    torch.testing.assert_close(after[1], before[1])
