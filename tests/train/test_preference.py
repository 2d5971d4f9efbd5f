"""DPO and IPO against TRL's DPOTrainer (the same tiny model, adapter and batch) and a float64 hand computation; the
reference pass (adapter disabled, or the frozen adapter being continued) against separately loaded copies."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import lorakit
from lorakit.data.jsonl import validate_records
from lorakit.data.preference import collate_pairs, tokenize_pairs
from lorakit.errors import DataError
from lorakit.io import adapter_tensors
from lorakit.train.preference import PreferenceLoss, pair_losses, preference_step, train_preferences
from lorakit.train.reference import add_reference, load_reference

RECORDS = [
    {"prompt": [{"role": "user", "content": "What color is the sky?"}],
     "chosen": [{"role": "assistant", "content": "It is blue."}],
     "rejected": [{"role": "assistant", "content": "It is green, surely."}]},
    {"prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+2?"}],
     "chosen": [{"role": "assistant", "content": "4"}],
     "rejected": [{"role": "assistant", "content": "5, I think, or maybe 6"}]},
    {"prompt": [{"role": "user", "content": "Name a fruit."}],
     "chosen": [{"role": "assistant", "content": "An apple."}],
     "rejected": [{"role": "assistant", "content": "A chair."}]},
]  # fmt: skip
LORA = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "lora_dropout": 0.0}


def test_sigmoid_and_ipo_losses_by_hand_in_float64() -> None:
    chosen, rejected = torch.tensor([-3.0, -7.25], dtype=torch.float64), torch.tensor([-5.0, -6.0], dtype=torch.float64)
    ref_c, ref_r = torch.tensor([-3.5, -7.0], dtype=torch.float64), torch.tensor([-4.0, -6.5], dtype=torch.float64)
    n_c, n_r = torch.tensor([2, 5]), torch.tensor([4, 3])
    beta = 0.1
    loss, rc, rr = pair_losses(chosen, rejected, ref_c, ref_r, beta, "sigmoid")
    # pair 1: log-ratios 0.5 and -1.0, so -log sigmoid(0.1 * 1.5) = log(1 + exp(-0.15)); pair 2: -0.25 and 0.5
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(-0.15)), math.log1p(math.exp(0.075))], abs=1e-15)
    assert rc.tolist() == pytest.approx([0.05, -0.025]) and rr.tolist() == pytest.approx([-0.1, 0.05])
    ipo, _, _ = pair_losses(chosen, rejected, ref_c, ref_r, beta, "ipo", n_c, n_r)
    # (0.5/2 + 1.0/4 - 1/0.2)^2 = (0.5 - 5)^2; (-0.25/5 - 0.5/3 - 5)^2
    assert ipo.tolist() == pytest.approx([20.25, (-0.05 - 0.5 / 3 - 5) ** 2], abs=1e-12)


def test_preference_records_plain_conversational_and_implicit() -> None:
    plain = validate_records([{"prompt": "Sky:", "chosen": " blue", "rejected": " green"}])
    assert plain == [{"prompt": "Sky:", "chosen": " blue", "rejected": " green"}]
    user = {"role": "user", "content": "Sky?"}
    implicit = validate_records([{"chosen": [user, {"role": "assistant", "content": "Blue."}],
                                  "rejected": [user, {"role": "assistant", "content": "Green."}]}])  # fmt: skip
    assert implicit == [{"prompt": [user], "chosen": [{"role": "assistant", "content": "Blue."}],
                         "rejected": [{"role": "assistant", "content": "Green."}]}]  # fmt: skip
    strings = validate_records([{"prompt": [user], "chosen": "Blue.", "rejected": "Green."}])
    assert strings == implicit
    with pytest.raises(DataError, match=r"record 2: preference record has 'chosen' but no 'rejected'"):
        validate_records([RECORDS[0], {"prompt": "x", "chosen": "y"}])
    with pytest.raises(DataError, match="record 1: 'prompt' is a string, so 'rejected' must be one too"):
        validate_records([{"prompt": "x", "chosen": "y", "rejected": [user]}])


def test_pairs_are_labelled_like_supervised_replies(smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    records = validate_records([RECORDS[0], {"prompt": "Sky:", "chosen": " blue", "rejected": " green"}])
    (conv, plain), stats = tokenize_pairs(tok, records, seq_len=256)
    labelled = [t for t in conv.chosen.labels if t != -100]
    assert tok.decode(labelled) == "It is blue.<|im_end|>"  # the reply and its end of turn, as SFT labels it
    assert tok.decode([t for t in plain.rejected.labels if t != -100]) == " green<|im_end|>"  # eos is <|im_end|>
    n = len(conv.chosen.input_ids) - len(labelled)
    assert conv.chosen.input_ids[:n] == conv.rejected.input_ids[:n], "one prompt, two replies"
    batch = collate_pairs([conv, plain], tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"][0].tolist()[:n] == conv.chosen.input_ids[:n]
    assert stats.n_skipped == 0
    with pytest.raises(lorakit.LorakitError, match="preference records .* train with DPO"):
        lorakit.Trainer(lorakit.load_model(str(_tiny(tok)))[0], tok, lorakit.TrainConfig(max_steps=1)).tokenize(
            [RECORDS[0]]
        )


_TINY: dict[int, Path] = {}


def _tiny(tok) -> Path:
    """A tiny Llama with the real tokenizer, saved once (random weights, fixed seed)."""
    import tempfile

    from transformers import LlamaConfig, LlamaForCausalLM

    if id(tok) not in _TINY:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             tie_word_embeddings=True, initializer_range=0.2)  # fmt: skip
        folder = Path(tempfile.mkdtemp(prefix="tiny-dpo-"))
        LlamaForCausalLM(config).save_pretrained(folder)
        tok.save_pretrained(folder)
        _TINY[id(tok)] = folder
    return _TINY[id(tok)]


def _randomize(model: torch.nn.Module, seed: int, adapter: str = "default") -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f"lora_B.{adapter}." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


def _trl_trainer(model, tok, tmp: Path, loss_type: str, **kwargs):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp), beta=0.1, loss_type=[loss_type], report_to=[], bf16=False, use_cpu=True,
                     per_device_train_batch_size=len(RECORDS))  # fmt: skip
    return DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(RECORDS), processing_class=tok, **kwargs)


def _trl_batch_and_results(trainer) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, torch.Tensor]]:
    """TRL's batch as lorakit's (labels on the completion tokens), its loss and metrics, and its adapter gradients."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(RECORDS))])
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    got = {k: v[-1] for k, v in trainer._metrics["train"].items() if k.startswith("rewards/")}
    grads = {n.replace(".default", ""): p.grad.clone() for n, p in trainer.model.named_parameters() if ".default." in n}
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    ours = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
    return ours, {"loss": float(loss), **got}, grads


def _assert_same_as_trl(trainer: lorakit.Trainer, batch, want: dict[str, float], grads, reference: bool | str) -> None:
    ref = trainer.log_probs(batch, adapter=reference)
    (pairs,) = trainer.procs.sum(batch["input_ids"].shape[0] // 2)
    c = trainer.config
    done = trainer.forward_backward(batch, loss=PreferenceLoss(ref, float(c.beta), c.loss_type, pairs))
    assert done["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-7)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert done[name] == pytest.approx(want[name], rel=1e-4, abs=1e-7), name
    assert abs(want["rewards/margins"]) > 1e-3, "the policy is not its reference"
    ours = {k.removeprefix("base_model.model."): p.grad for k, p in adapter_tensors(trainer.model, "default").items()}
    theirs = {k.removeprefix("base_model.model."): g for k, g in grads.items()}
    assert sorted(ours) == sorted(theirs)
    scale = max(float(g.abs().max()) for g in theirs.values())
    worst = max(float((ours[k] - g).abs().max()) for k, g in theirs.items())
    assert worst <= 1e-4 * scale, f"gradients differ by {worst:.2e} (largest gradient {scale:.2e})"  # fp32 rounding


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_a_new_adapter_s_dpo_equals_trl_with_the_base_as_reference(smollm2_tokenizer, tmp_path, loss_type) -> None:
    from peft import LoraConfig

    tok = smollm2_tokenizer
    base, _ = lorakit.load_model(str(_tiny(tok)))
    trl = _trl_trainer(base, tok, tmp_path, loss_type, peft_config=LoraConfig(**LORA))
    _randomize(trl.model, seed=1)  # B != 0: the policy differs from the base, its reference
    batch, want, grads = _trl_batch_and_results(trl)
    trl.model.save_pretrained(tmp_path / "adapter")

    model, _ = lorakit.load_model(str(_tiny(tok)))
    lorakit.load_adapter(model, tmp_path / "adapter", trainable=True)
    config = lorakit.TrainConfig(objective="dpo", loss_type=loss_type, precision="fp32", max_steps=1)
    _assert_same_as_trl(lorakit.Trainer(model, tok, config), batch, want, grads, reference=False)


def test_continuing_an_adapter_s_dpo_equals_trl_with_the_frozen_adapter_as_reference(
    smollm2_tokenizer, tmp_path
) -> None:
    """TRL copies an adapter it is given to continue as a frozen "ref" adapter; lorakit's "reference" is the same."""
    from peft import LoraConfig, get_peft_model

    tok = smollm2_tokenizer
    sft = get_peft_model(lorakit.load_model(str(_tiny(tok)))[0], LoraConfig(**LORA))
    _randomize(sft, seed=1)
    sft.save_pretrained(tmp_path / "sft")  # the SFT adapter being continued
    trl = _trl_trainer(sft, tok, tmp_path, "sigmoid")
    assert "ref" in trl.model.peft_config
    _randomize(trl.model, seed=2)  # as if DPO had moved the trained copy already
    batch, want, grads = _trl_batch_and_results(trl)
    trl.model.save_pretrained(tmp_path / "moved", selected_adapters=["default"])

    model, _ = lorakit.load_model(str(_tiny(tok)))
    lorakit.load_adapter(model, tmp_path / "moved", trainable=True)
    load_reference(model, tmp_path / "sft")
    config = lorakit.TrainConfig(objective="dpo", precision="fp32", max_steps=1)
    _assert_same_as_trl(lorakit.Trainer(model, tok, config), batch, want, grads, reference="reference")


def _plain_log_probs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p of each label token by a plain forward of ``model`` in float64 (B, T), 0 off the labels."""
    with torch.no_grad():
        logits = model.double()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1], -1).gather(2, batch["input_ids"][:, 1:, None]).squeeze(2)
    keep = batch["labels"][:, 1:] != -100
    return torch.nn.functional.pad(logp * keep, (1, 0))


def test_reference_log_probs_are_a_separate_copy_s(smollm2_tokenizer, tmp_path) -> None:
    """Adapter disabled = a separately loaded base; the frozen continued adapter = that adapter loaded by peft, even
    after DPO steps moved the trained one; add_reference (in memory) = load_reference (from the file)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    tok = smollm2_tokenizer
    sft = get_peft_model(lorakit.load_model(str(_tiny(tok)))[0], LoraConfig(**LORA))
    _randomize(sft, seed=3)
    sft.save_pretrained(tmp_path / "sft")
    pairs, _ = tokenize_pairs(tok, validate_records(RECORDS), 256)
    batch = collate_pairs(pairs, tok.pad_token_id)

    model, _ = lorakit.load_model(str(_tiny(tok)))
    lorakit.load_adapter(model, tmp_path / "sft", trainable=True)
    load_reference(model, tmp_path / "sft")
    trainer = lorakit.Trainer(model, tok, lorakit.TrainConfig(objective="dpo", precision="fp32", max_steps=3, lr=0.05))
    for _ in range(2):
        preference_step(trainer, batch)
    base_copy = lorakit.load_model(str(_tiny(tok)))[0]
    torch.testing.assert_close(trainer.log_probs(batch, adapter=False).double(), _plain_log_probs(base_copy, batch),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    sft_copy = PeftModel.from_pretrained(lorakit.load_model(str(_tiny(tok)))[0], tmp_path / "sft")
    frozen = trainer.log_probs(batch, adapter="reference").double()
    torch.testing.assert_close(frozen, _plain_log_probs(sft_copy, batch), rtol=1e-5, atol=1e-5)
    moved = trainer.log_probs(batch).double()
    assert (moved - frozen).abs().max() > 1e-2, "the trained adapter moved, the reference did not"

    again, _ = lorakit.load_model(str(_tiny(tok)))
    lorakit.load_adapter(again, tmp_path / "sft", trainable=True)
    add_reference(again)
    assert lorakit.adapters.active_adapters(again) == ["default"]
    assert all(not p.requires_grad for p in adapter_tensors(again, "reference").values())
    copy = lorakit.Trainer(again, tok, lorakit.TrainConfig(objective="dpo", precision="fp32", max_steps=1))
    torch.testing.assert_close(copy.log_probs(batch, adapter="reference").double(), _plain_log_probs(sft_copy, batch),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_dpo_steps_raise_the_margin(smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    model, _ = lorakit.load_model(str(_tiny(tok)))
    config = lorakit.TrainConfig(objective="dpo", precision="fp32", max_steps=6, lr=0.02, batch_size=3, r=4,
                                 warmup_steps=0, lr_schedule="constant")  # fmt: skip
    trainer = lorakit.Trainer(model, tok, config)
    pairs, _ = tokenize_pairs(tok, validate_records(RECORDS), 256)
    history = train_preferences(trainer, pairs, progress=False)
    assert [m["step"] for m in history] == [1, 2, 3, 4, 5, 6]
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6), "B = 0: the policy is its reference"
    assert history[-1]["rewards/margins"] > 0.05 and history[-1]["rewards/accuracies"] == 1.0
    assert history[-1]["loss"] < history[0]["loss"] - 0.01


def test_the_package_never_imports_trl() -> None:
    """trl is the tests' reference only (a test dependency), like peft."""
    import ast

    package = Path(lorakit.__file__).parent
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n == "trl" or n.startswith("trl.") for n in names), path


def test_a_pair_without_labels_weighs_nothing(smollm2_tokenizer) -> None:
    """What a rank left without pairs runs (one pair, every label -100) changes neither the loss nor the metrics."""
    tok = smollm2_tokenizer
    pairs, _ = tokenize_pairs(tok, validate_records(RECORDS), 256)
    alone = collate_pairs(pairs[:1], tok.pad_token_id)
    padded = collate_pairs(pairs[:2], tok.pad_token_id)
    padded["labels"][[1, 3]] = -100  # the second pair's chosen and rejected rows

    def run(batch: dict[str, torch.Tensor]) -> dict[str, float]:
        model, _ = lorakit.load_model(str(_tiny(tok)))
        trainer = lorakit.Trainer(model, tok, lorakit.TrainConfig(objective="dpo", precision="fp32", max_steps=2, r=4))
        _randomize(trainer.model, seed=5)
        return preference_step(trainer, batch)

    a, b = run(alone), run(padded)
    for key in ("loss", "rewards/chosen", "rewards/margins", "rewards/accuracies", "grad_norm"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
