"""fp16 training with dynamic loss scaling (``torch.amp.GradScaler``), run on the CPU: the scaler's logic is the
same on every device. Checked against fp32 training of the same run, and against what a skipped step must leave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import lorakit
from lorakit.io import adapter_tensors
from lorakit.runs import RunConfig, train_run

SETTINGS = dict(max_steps=4, batch_size=4, lr=3e-3, warmup_steps=1, seq_len=256, r=4, lora_alpha=8)


def _trainer(folder: Path, precision: str, **changes: object) -> lorakit.Trainer:
    config = lorakit.TrainConfig(**{**SETTINGS, "precision": precision, **changes})  # type: ignore[arg-type]
    return lorakit.Trainer(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), config)


def _set_scale(trainer: lorakit.Trainer, scale: float) -> None:
    assert trainer.scaler is not None
    trainer.scaler.load_state_dict({"scale": scale, "growth_factor": 2.0, "backoff_factor": 0.5,
                                    "growth_interval": 2000, "_growth_tracker": 0})  # fmt: skip


def _steps(trainer: lorakit.Trainer, data: Path) -> list[dict[str, float]]:
    seen: list[dict[str, float]] = []
    trainer.fit(data, on_step=lambda _, m: seen.append(m), progress=False)
    return seen


def test_fp16_follows_fp32_and_reports_the_unscaled_gradient_norm(tiny_model_dir: Path, small_chat_data: Path) -> None:
    fp32 = _trainer(tiny_model_dir, "fp32")
    fp16 = _trainer(tiny_model_dir, "fp16")
    assert fp32.scaler is None and fp16.autocast == torch.float16 and fp16.scaler is not None
    frozen = [p for p in fp16.model.parameters() if not p.requires_grad]
    assert {p.dtype for p in frozen} == {torch.float16}, "the frozen base is stored in the compute dtype"
    assert {p.dtype for p in fp16.model.parameters() if p.requires_grad} == {torch.float32}, "adapters stay fp32"
    a, b = _steps(fp32, small_chat_data), _steps(fp16, small_chat_data)
    assert [m["skipped"] for m in b] == [0.0] * 4 and [m["loss_scale"] for m in b] == [2.0**16] * 4
    assert "loss_scale" not in a[0], "no scaling outside fp16"
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=5e-3)
        # unscaled before clipping and reporting: a scaled norm would be 65,536 times larger
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=5e-2)
    # after 4 AdamW steps of ~lr each (nearly sign-driven for the small early gradients), the adapters are close
    state = adapter_tensors(fp16.model, "default")
    for k, v in adapter_tensors(fp32.model, "default").items():
        assert float((state[k] - v).detach().norm()) <= 0.1 * float(v.detach().norm()), k
    assert all(v.dtype == torch.float32 for v in fp16.optimizer.state_dict()["state"][0].values() if v.ndim)


def test_an_overflow_skips_the_step_and_halves_the_scale(tiny_model_dir: Path, small_chat_data: Path) -> None:
    trainer = _trainer(tiny_model_dir, "fp16")
    batch = trainer.batches(trainer.tokenize(small_chat_data))[0]
    before = {k: v.clone() for k, v in adapter_tensors(trainer.model, "default").items()}
    _set_scale(trainer, 2.0**60)  # gradients times 2^60 overflow fp16 (largest finite: 65,504)
    assert trainer.scheduler is not None
    m = trainer.step(batch)
    assert (m["skipped"], m["loss_scale"], m["step"]) == (1.0, 2.0**60, 1)
    assert trainer.scheduler.last_epoch == 0, "the schedule waits for a step that changes something"
    assert m["loss"] == pytest.approx(trainer.evaluate([batch]), rel=1e-2), "the loss itself is finite"
    after = adapter_tensors(trainer.model, "default")
    assert all(torch.equal(after[k], before[k]) for k in before), "nothing applied"
    assert not trainer.optimizer.state, "AdamW never stepped"
    assert trainer.scaler is not None and trainer.scaler.get_scale() == 2.0**59
    m = trainer.step(batch)
    assert m["skipped"] == 1.0 and trainer.scaler.get_scale() == 2.0**58

    _set_scale(trainer, 2.0**8)
    m = trainer.step(batch)
    assert (m["skipped"], m["loss_scale"], m["step"]) == (0.0, 2.0**8, 3) and trainer.scheduler.last_epoch == 1
    after = adapter_tensors(trainer.model, "default")
    assert any(not torch.equal(after[k], before[k]) for k in before if "lora_B" in k)


def test_the_loss_scale_is_part_of_the_state(tiny_model_dir: Path, small_chat_data: Path) -> None:
    """A run resumed from ``state_dict`` goes on with the scale it had reached (here after skipped steps), so it
    ends bit for bit where the uninterrupted run ends."""
    whole = _trainer(tiny_model_dir, "fp16")
    _set_scale(whole, 2.0**26)
    whole_steps = _steps(whole, small_chat_data)
    assert any(m["skipped"] for m in whole_steps[:2]), "the run starts with skipped steps"

    first = _trainer(tiny_model_dir, "fp16")
    _set_scale(first, 2.0**26)
    data = first.tokenize(small_chat_data)
    for step in range(2):
        first.step([first.batches(data)[step]])
    state = first.state_dict()
    assert state["scaler"]["scale"] < 2.0**26
    weights = {k: v.clone() for k, v in adapter_tensors(first.model, "default").items()}

    second = _trainer(tiny_model_dir, "fp16")
    with torch.no_grad():
        for k, v in adapter_tensors(second.model, "default").items():
            v.copy_(weights[k])
    second.load_state_dict(state)
    rest = _steps(second, data)
    assert [m["loss_scale"] for m in rest] == [m["loss_scale"] for m in whole_steps[2:]]
    a, b = adapter_tensors(whole.model, "default"), adapter_tensors(second.model, "default")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert second.scaler is not None and whole.scaler is not None
    assert second.scaler.state_dict() == whole.scaler.state_dict()


def test_lorakit_train_in_fp16_logs_the_scale(tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path) -> None:
    config = RunConfig(model=str(tiny_model_dir), data=str(small_chat_data), output=str(tmp_path / "run"),
                                 device="cpu", precision="fp16", **SETTINGS)  # type: ignore[arg-type]  # fmt: skip
    result = train_run(config, progress=False)
    lines = [json.loads(line) for line in (result.output / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    assert len(train) == 4 and all(r["loss_scale"] == 2.0**16 and r["skipped"] is False for r in train)
    assert "peak_gpu_mb" not in train[0], "no GPU, no GPU memory column"
    summary = json.loads((result.output / "train_summary.json").read_text())
    assert (summary["precision"], summary["device"]) == ("float16", "cpu")
