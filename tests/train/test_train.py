"""The training loop: deterministic, resumable to the same adapter, and what it leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import lorakit
from lorakit.errors import LorakitError
from lorakit.runs import RunConfig, folder, train_run
from lorakit.train import trainer as trainer_module


def _config(model_dir: Path, data: Path, output: Path, **overrides: object) -> RunConfig:
    base = dict(model=str(model_dir), data=str(data), output=str(output), max_steps=6, batch_size=4, lr=3e-3,
                warmup_steps=1, precision="fp32", seq_len=256, r=4, lora_alpha=8)  # fmt: skip
    return RunConfig(**{**base, **overrides})  # type: ignore[arg-type]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def test_training_is_deterministic_and_resume_gives_the_same_adapter(
    tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = train_run(_config(tiny_model_dir, small_chat_data, tmp_path / "full", lora_dropout=0.1), progress=False)
    again = train_run(_config(tiny_model_dir, small_chat_data, tmp_path / "again", lora_dropout=0.1), progress=False)
    a, b = _weights(full.output), _weights(again.output)
    assert all(torch.equal(a[k], b[k]) for k in a), "same seed, same adapter"

    # Interrupt after the checkpoint at step 4 (of 6), then resume.
    real_save = trainer_module.save_checkpoint

    def save_then_die(output, model, state, *weights):  # type: ignore[no-untyped-def]
        folder = real_save(output, model, state, *weights)
        step = state["step"]
        if step == 4:
            raise KeyboardInterrupt
        return folder

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    cfg = _config(tiny_model_dir, small_chat_data, tmp_path / "resumed", lora_dropout=0.1, save_every=2)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, progress=False)
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    assert not (tmp_path / "resumed" / "adapter_model.safetensors").exists()
    resumed = train_run(RunConfig(**{**cfg.to_dict(), "resume": True}), progress=False)
    c = _weights(resumed.output)
    init = lorakit.add_adapter(lorakit.load_model(str(tiny_model_dir))[0], cfg.lora_config())
    assert max((a[k] - c[k]).abs().max().item() for k in a) <= 1e-6
    moved = max((a[k] - v).abs().max().item() for k, v in lorakit.io.adapter_tensors(init, "default").items())
    assert moved > 1e-3, "the adapter trained"
    steps = [r["step"] for r in map(json.loads, (resumed.output / "metrics.jsonl").read_text().splitlines())]
    assert steps == [1, 2, 3, 4, 5, 6], "metrics of the resumed run: no step lost, none twice"

    # A finished run has nothing to resume, unless --max-steps grows: then it goes on from its last step.
    with pytest.raises(LorakitError, match="already reached step 6 of 6"):
        train_run(RunConfig(**{**cfg.to_dict(), "resume": True}), progress=False)
    longer = train_run(RunConfig(**{**cfg.to_dict(), "resume": True, "max_steps": 8}), progress=False)
    steps = [r["step"] for r in map(json.loads, (longer.output / "metrics.jsonl").read_text().splitlines())]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]


def test_outputs_of_a_run(tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path) -> None:
    result = train_run(_config(tiny_model_dir, small_chat_data, tmp_path / "run", eval_data=str(small_chat_data),
                                eval_every=3), progress=False)  # fmt: skip
    out = result.output
    for name in ("adapter_config.json", "adapter_model.safetensors", "loss.png", "metrics.jsonl", "README.md"):
        assert (out / name).exists(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    # eval_every=3: steps 3 and 6, the last step once (its loss is also the summary's final eval_loss)
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["final"]["eval_loss"] == round(records[-1]["eval_loss"], 4)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    card = (out / "README.md").read_text()
    assert "Trainable parameters" in card and "AutoPeftModelForCausalLM.from_pretrained" in card
    # the adapter loads in peft
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    theirs = peft.PeftModel.from_pretrained(base, out)
    assert sum(p.numel() for n, p in theirs.named_parameters() if "lora_" in n) == result.trainable


def test_eval_split_holds_out_records_for_the_eval_loss(
    tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path
) -> None:
    from lorakit.data.jsonl import read_jsonl

    result = train_run(_config(tiny_model_dir, small_chat_data, tmp_path / "run", max_steps=1, eval_split=0.25),
                      progress=False)  # fmt: skip
    held = read_jsonl(result.output / "held_out.jsonl")
    everything = read_jsonl(small_chat_data)
    assert len(held) == 6 and all(r in everything for r in held)
    summary = json.loads((result.output / "train_summary.json").read_text())
    assert summary["n_examples"] == 18 and summary["final"]["eval_loss"] > 0
    records = [json.loads(line) for line in (result.output / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("train", 1), ("eval", 1)], "no schedule: evaluated at the end"
    with pytest.raises(ValueError, match="--eval-split must be a share"):
        RunConfig(eval_split=1.5)


def test_refuses_to_overwrite_a_finished_run(tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_model_dir, small_chat_data, tmp_path / "run", max_steps=1)
    train_run(cfg, progress=False)
    with pytest.raises(LorakitError, match="already holds a finished run"):
        train_run(cfg, progress=False)
    train_run(RunConfig(**{**cfg.to_dict(), "overwrite": True}), progress=False)


def test_resume_with_other_settings_is_refused(tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_model_dir, small_chat_data, tmp_path / "run", max_steps=1)
    train_run(cfg, progress=False)
    with pytest.raises(LorakitError, match=r"different settings.*lr"):
        train_run(RunConfig(**{**cfg.to_dict(), "resume": True, "lr": 1.0}), progress=False)
    # Padding batches further is the same run; a run saved before the flag existed (no key) resumes too.
    saved = json.loads((tmp_path / "run" / folder.CONFIG).read_text())
    del saved["pad_to_multiple_of"]
    (tmp_path / "run" / folder.CONFIG).write_text(json.dumps(saved))
    more = {**cfg.to_dict(), "resume": True, "max_steps": 2, "pad_to_multiple_of": 1}
    assert train_run(RunConfig(**more), progress=False).steps == 2


def test_non_finite_loss_stops_with_the_step(tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path) -> None:
    with pytest.raises(LorakitError, match=r"loss became (nan|inf) at step \d+"):
        train_run(_config(tiny_model_dir, small_chat_data, tmp_path / "run", lr=1e12, max_grad_norm=0.0,
                           max_steps=30), progress=False)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"r": 0}, "--r must be a positive integer"), ({"lr_schedule": "step"}, "--lr-schedule must be one of"),
     ({"lora_dropout": 1.5}, "--lora-dropout")],
)  # fmt: skip
def test_config_errors_name_the_flag(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig(**kwargs)
