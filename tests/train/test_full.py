"""--method full: every weight trains, the output is a whole model, and a resumed run ends where an
uninterrupted one does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import lorakit
from lorakit.runs import RunConfig, train_run
from lorakit.train import trainer as trainer_module


def _config(model_dir: Path, data: Path, output: Path, **overrides: object) -> RunConfig:
    base = dict(model=str(model_dir), data=str(data), output=str(output), max_steps=4, batch_size=4, lr=1e-3,
                warmup_steps=1, precision="fp32", seq_len=256, method="full")  # fmt: skip
    return RunConfig(**{**base, **overrides})  # type: ignore[arg-type]


def _state(folder: Path) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(folder)  # plain transformers, no lorakit
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_full_fine_tuning_trains_every_weight_and_saves_a_model(
    tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = train_run(_config(tiny_model_dir, small_chat_data, tmp_path / "run"), progress=False)
    assert result.trainable == result.total, "full fine-tuning trains every parameter"
    assert not (result.output / "adapter_model.safetensors").exists()
    before, after = _state(tiny_model_dir), _state(result.output)
    assert before.keys() == after.keys()
    assert all(after[k].dtype == torch.float32 for k in after), "fp32 master weights"
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == list(before), "every tensor moved"
    # The folder loads through lorakit like any base model, with its tokenizer, and scores differently.
    model, tokenizer = lorakit.load_model(str(result.output))
    ids = tokenizer("hello there", return_tensors="pt")["input_ids"]
    base, _ = lorakit.load_model(str(tiny_model_dir))
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base(ids).logits)

    # Interrupted after the checkpoint at step 2, then resumed: the same weights as the uninterrupted run.
    real_save = trainer_module.save_checkpoint

    def save_then_die(output, model, state, *weights):  # type: ignore[no-untyped-def]
        folder = real_save(output, model, state, *weights)
        step = state["step"]
        if step == 2:
            raise KeyboardInterrupt
        return folder

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    cfg = _config(tiny_model_dir, small_chat_data, tmp_path / "resumed", save_every=2)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, progress=False)
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    saved = load_file(tmp_path / "resumed" / "checkpoints" / "step-000002" / "model.safetensors")
    assert "model.embed_tokens.weight" in saved and "lm_head.weight" not in saved, "tied weights stored once"
    resumed = train_run(RunConfig(**{**cfg.to_dict(), "resume": True}), progress=False)
    again = _state(resumed.output)
    assert max((after[k] - again[k]).abs().max().item() for k in after) <= 1e-6


def test_method_is_validated() -> None:
    with pytest.raises(ValueError, match="--method must be one of"):
        RunConfig(method="everything")  # type: ignore[arg-type]
