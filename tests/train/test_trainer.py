"""lorakit.Trainer on a model the caller holds: the same run as `lorakit train`, one step as hand-computed, exact
continuation from a state, and nothing changed outside the model it was given."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import lorakit
from lorakit.data.jsonl import read_jsonl
from lorakit.errors import LorakitError
from lorakit.io import adapter_tensors
from lorakit.runs import RunConfig, train_run
from tests.tiny import tiny_llama, token_ids

SETTINGS = dict(max_steps=4, batch_size=4, lr=3e-3, warmup_steps=1, precision="fp32", seq_len=256, r=4, lora_alpha=8)


def _plain(folder: Path) -> tuple[torch.nn.Module, object]:
    """The model and tokenizer as a user holds them: loaded with plain transformers."""
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def test_fit_on_a_plain_transformers_model_is_lorakit_trains_run(
    tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path
) -> None:
    model, tokenizer = _plain(tiny_model_dir)
    trainer = lorakit.Trainer(model, tokenizer, lorakit.TrainConfig(**SETTINGS))  # type: ignore[arg-type]
    result = trainer.fit(read_jsonl(small_chat_data), progress=False)  # records, not a file
    assert result.steps == 4 and result.tokens > 0 and 0 < result.final_loss < 20
    assert result.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    lorakit.save_adapter(trainer.model, tmp_path / "mine")

    run = train_run(RunConfig(model=str(tiny_model_dir), data=str(small_chat_data),
                                            output=str(tmp_path / "cli"), **SETTINGS), progress=False)  # fmt: skip
    mine, cli = (
        load_file(tmp_path / "mine" / "adapter_model.safetensors"),
        load_file(run.output / "adapter_model.safetensors"),
    )
    assert mine.keys() == cli.keys()
    assert all(torch.equal(mine[k], cli[k]) for k in mine), "lorakit train is the trainer plus a run folder"
    assert run.final_loss == pytest.approx(result.final_loss, rel=1e-6)


def test_one_step_reports_transformers_loss_and_moves_only_the_adapter(tiny_model_dir: Path) -> None:
    model, tokenizer = _plain(tiny_model_dir)
    config = lorakit.TrainConfig(max_steps=1, warmup_steps=0, precision="fp32", r=4, lora_alpha=8, lr=1e-2)
    trainer = lorakit.Trainer(model, tokenizer, config)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt: no loss
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        expected = model(**batch).loss.item()  # transformers' own mean cross-entropy over the label tokens
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {k: v.detach().clone() for k, v in adapter_tensors(model, "default").items()}
    metrics = trainer.step(batch)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["step"] == 1 and metrics["tokens"] == 24 and metrics["lr"] == pytest.approx(1e-2)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen), "base frozen"
    after = adapter_tensors(model, "default")
    assert any(not torch.equal(after[k], before[k]) for k in after if "lora_B" in k), "B moved off zero"


def test_micro_batches_accumulate_to_the_whole_batch(tiny_model_dir: Path) -> None:
    """Two halves in one step give the gradient step of the whole batch: one normaliser over all label tokens."""
    ids = torch.randint(0, 1000, (4, 10), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :7] = -100  # rows with different label counts: a mean of means would differ
    whole = {"input_ids": ids, "labels": labels}
    config = lorakit.TrainConfig(max_steps=1, warmup_steps=0, precision="fp32", r=4, lora_alpha=8,
                                 init_lora_weights="gaussian")  # fmt: skip
    results = []
    for parts in ([whole], [{k: v[:2] for k, v in whole.items()}, {k: v[2:] for k, v in whole.items()}]):
        model, tokenizer = _plain(tiny_model_dir)
        trainer = lorakit.Trainer(model, tokenizer, config)
        loss = trainer.step(parts)["loss"]
        results.append((loss, adapter_tensors(model, "default")))
    (loss_a, a), (loss_b, b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_a_state_continues_the_run_exactly(tiny_model_dir: Path, small_chat_data: Path) -> None:
    config = lorakit.TrainConfig(**{**SETTINGS, "lora_dropout": 0.2})  # type: ignore[arg-type]  # dropout draws RNG
    whole = lorakit.Trainer(*_plain(tiny_model_dir), config)
    whole.fit(small_chat_data, progress=False)

    first = lorakit.Trainer(*_plain(tiny_model_dir), config)
    data = first.tokenize(small_chat_data)
    for step in range(2):
        first.step([first.batches(data)[step]])
    state = first.state_dict()
    weights = {k: v.clone() for k, v in adapter_tensors(first.model, "default").items()}

    second = lorakit.Trainer(*_plain(tiny_model_dir), config)
    with torch.no_grad():
        for k, v in adapter_tensors(second.model, "default").items():
            v.copy_(weights[k])
    second.load_state_dict(state)
    second.fit(data, progress=False)
    a, b = adapter_tensors(whole.model, "default"), adapter_tensors(second.model, "default")
    assert all(torch.equal(a[k], b[k]) for k in a), "state_dict holds all a run needs to go on"


def test_trains_the_adapter_the_model_has(tiny_model_dir: Path, small_chat_data: Path) -> None:
    model, tokenizer = _plain(tiny_model_dir)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    trainer = lorakit.Trainer(model, tokenizer, lorakit.TrainConfig(**SETTINGS))  # type: ignore[arg-type]
    assert set(lorakit.adapters.adapter_configs(model)) == {"default"}
    keys = list(adapter_tensors(model, "default"))
    assert len(keys) == 4 and all(".q_proj.lora_" in k for k in keys), "no second adapter, no new targets"
    assert trainer.fit(small_chat_data, progress=False).steps == 4


def test_epochs_need_fit_and_batches_need_input_ids(tiny_model_dir: Path) -> None:
    trainer = lorakit.Trainer(*_plain(tiny_model_dir), lorakit.TrainConfig(max_steps=0, epochs=1.0, precision="fp32"))
    with pytest.raises(LorakitError, match="call fit"):
        trainer.step({"input_ids": torch.ones(1, 4, dtype=torch.long)})
    trainer = lorakit.Trainer(*_plain(tiny_model_dir), lorakit.TrainConfig(max_steps=2, precision="fp32"))
    with pytest.raises(ValueError, match="input_ids"):
        trainer.step({"labels": torch.ones(1, 4, dtype=torch.long)})


def test_nothing_outside_the_model_changes(tiny_model_dir: Path, small_chat_data: Path) -> None:
    """After fit, the global RNGs are as they were and a model lorakit never touched computes exactly as before;
    no allocator call, no registry entry is left behind."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    import lorakit.cli.process as process

    untouched = tiny_llama().bfloat16()
    ids = token_ids()
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with torch.no_grad():
        reference = untouched(ids, attention_mask=mask).logits.clone()
    registries = (dict(AttentionInterface._global_mapping), dict(AttentionMaskInterface._global_mapping))
    torch.manual_seed(1234)
    random.seed(99)
    torch_state, python_state = torch.get_rng_state(), random.getstate()

    model, tokenizer = _plain(tiny_model_dir)
    calls = []
    original = (process.fix_mmap_threshold, process.return_free_memory)
    process.fix_mmap_threshold = lambda *a, **k: calls.append("mallopt")  # type: ignore[assignment]
    process.return_free_memory = lambda: calls.append("malloc_trim")  # type: ignore[assignment]
    try:
        # bf16 on a CPU: frozen weights to bf16 and fp32 attention inside the trainer's steps
        config = lorakit.TrainConfig(**{**SETTINGS, "precision": "bf16", "lora_dropout": 0.1})  # type: ignore[arg-type]
        lorakit.Trainer(model, tokenizer, config).fit(small_chat_data, progress=False)
    finally:
        process.fix_mmap_threshold, process.return_free_memory = original
    assert calls == []
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert (dict(AttentionInterface._global_mapping), dict(AttentionMaskInterface._global_mapping)) == registries
    assert model.config._attn_implementation == "sdpa", "the model itself is left on sdpa between steps"
    with torch.no_grad():
        assert torch.equal(untouched(ids, attention_mask=mask).logits, reference)


@pytest.mark.integration
def test_the_readme_example_trains_the_built_in_model_with_plain_transformers(tmp_path: Path) -> None:
    import runpy

    example = runpy.run_path(str(Path(__file__).resolve().parents[2] / "examples" / "train_in_python.py"))
    result = example["main"](["--steps", "2", "--output", str(tmp_path / "adapter")])
    assert result.steps == 2 and result.final_loss < 5
    model, _ = lorakit.load_model()
    lorakit.load_adapter(model, tmp_path / "adapter")
    assert len(lorakit.adapters.adapter_configs(model)) == 1
