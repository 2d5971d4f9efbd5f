"""PiSSA and OLoRA inits against the real peft package, and their conversion to plain LoRA adapters (rank 2r)
that load on the unmodified base, both ways."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import peft
import pytest
import torch
from torch import nn

import lorakit
from tests.tiny import logits_of, tiny_llama, token_ids

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _train_a_little(model: nn.Module, seed: int = 5) -> None:
    """Stand-in for training: move every adapter weight by a random step."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.add_(0.2 * torch.randn(param.shape, generator=gen, dtype=param.dtype))


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("rslora", [False, True], ids=["plain", "rslora"])
def test_init_matches_peft_and_keeps_the_output(init: str, rslora: bool) -> None:
    base, x = tiny_llama(), token_ids()
    kwargs = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "use_rslora": rslora, "init_lora_weights": init}
    ours = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(**kwargs))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
    torch.testing.assert_close(logits_of(ours, x), logits_of(base, x), atol=1e-5, rtol=0)
    mine = dict(ours.named_parameters())
    checked = 0
    for name, param in theirs.named_parameters():
        if "lora_" in name or "base_layer" in name:
            torch.testing.assert_close(mine[name.removeprefix("base_model.model.")], param, atol=1e-5, rtol=1e-5)
            checked += 1
    assert checked == 3 * 2 * 3  # A, B, residual base weight of 3 modules in 2 layers


def test_pissa_fast_svd_keeps_the_output_and_takes_the_top_subspace() -> None:
    base, x = tiny_llama(), token_ids()
    weight = base.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():  # a spectrum with a clear top 4, so the randomised SVD has a definite answer
        q1, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))
        q2, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(1)))
        spectrum = torch.cat([torch.tensor([4.0, 3.0, 2.0, 1.5]), torch.full((28,), 0.05)])
        weight.copy_((q1 * spectrum) @ q2.T)
    config = lorakit.LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, init_lora_weights="pissa_niter_8")
    ours = lorakit.add_adapter(copy.deepcopy(base), config)
    torch.testing.assert_close(logits_of(ours, x), logits_of(base, x), atol=1e-5, rtol=0)
    layer = ours.model.layers[0].self_attn.q_proj
    w = base.model.layers[0].self_attn.q_proj.weight.double()
    u, s, vh = torch.linalg.svd(w)
    best = (u[:, :4] * s[:4]) @ vh[:4]  # the exact rank-4 truncation
    got = layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
    assert (got - best).norm() / best.norm() < 1e-3


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("rslora", [False, True], ids=["plain", "rslora"])
def test_converted_adapter_loads_on_the_original_base(init: str, rslora: bool, tmp_path: Path) -> None:
    base, x = tiny_llama(), token_ids()
    kwargs = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "use_rslora": rslora, "init_lora_weights": init}
    # lorakit trains, converts; peft loads the plain adapter on the unmodified base.
    ours = lorakit.add_adapter(copy.deepcopy(base), lorakit.LoraConfig(**kwargs))
    lorakit.save_adapter(ours, tmp_path / "init")
    _train_a_little(ours)
    lorakit.save_adapter(ours, tmp_path / "lora", initial_adapter=tmp_path / "init")
    written = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert written["r"] == 8 and written["init_lora_weights"] is True
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "lora").eval()
    expected = logits_of(ours, x)
    assert (expected - logits_of(base, x)).abs().max() > 1e-2
    torch.testing.assert_close(logits_of(theirs, x), expected, atol=1e-4, rtol=0)
    # ... and lorakit too.
    torch.testing.assert_close(logits_of(lorakit.load_adapter(copy.deepcopy(base), tmp_path / "lora"), x), expected,
                               atol=1e-4, rtol=0)  # fmt: skip

    # peft trains and converts; lorakit loads its plain adapter on the unmodified base.
    peft_model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
    peft_model.save_pretrained(tmp_path / "p" / "init")
    _train_a_little(peft_model)
    peft_model.save_pretrained(
        tmp_path / "p" / "lora", path_initial_model_for_weight_conversion=tmp_path / "p" / "init"
    )
    loaded = lorakit.load_adapter(copy.deepcopy(base), tmp_path / "p" / "lora")
    torch.testing.assert_close(logits_of(loaded, x), logits_of(peft_model.eval(), x), atol=1e-4, rtol=0)


def test_conversion_refusals(tmp_path: Path) -> None:
    model = lorakit.add_adapter(
        tiny_llama(), lorakit.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights="pissa")
    )
    lorakit.save_adapter(model, tmp_path / "init")
    other = lorakit.add_adapter(
        tiny_llama(), lorakit.LoraConfig(r=2, target_modules=TARGETS, init_lora_weights="pissa")
    )
    with pytest.raises(lorakit.AdapterError, match="another rank"):
        lorakit.save_adapter(other, tmp_path / "x", initial_adapter=tmp_path / "init")
    with pytest.raises(lorakit.AdapterError, match="Linear layers only"):
        lorakit.add_adapter(
            tiny_llama(), lorakit.LoraConfig(target_modules=["embed_tokens"], init_lora_weights="olora")
        )
