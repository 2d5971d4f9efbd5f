"""GRPO: advantages and the clipped-ratio loss against float64 hand computations; equal rewards teach nothing; a
reward that prefers one token makes it likelier; rewards looked up by name fail in one line naming the function."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import lorakit
from lorakit.data.prompts import PromptRecord, read_prompts
from lorakit.errors import LorakitError
from lorakit.train.grpo import ClippedRatioLoss, group_advantages, grpo_step, train_grpo
from lorakit.train.rewards import Reward, load_reward, load_rewards, score
from lorakit.train.sampling import Completion, completion_batch


def test_group_advantages_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, float("nan"), 4.0], dtype=torch.float64)
    adv, zero = group_advantages(rewards, n=4)
    # group 1: mean 0.5, Bessel std sqrt((0.25 + 0.25 + 0 + 0) / 3)
    std = math.sqrt(0.5 / 3)
    assert adv[:4].tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.0, 0.0], abs=1e-12)
    # group 2: the unscored completion is left out of mean (8/3) and std, and gets 0
    mean = 8 / 3
    std2 = math.sqrt(((2 - mean) ** 2 * 2 + (4 - mean) ** 2) / 2)  # over 2.0, 2.0, 4.0, Bessel-corrected
    assert adv[4:].tolist() == pytest.approx([(2 - mean) / (std2 + 1e-4)] * 2 + [0.0, (4 - mean) / (std2 + 1e-4)])
    assert zero.tolist() == [False, False]
    flat, zero = group_advantages(torch.tensor([3.0, 3.0, 1.0, 2.0]), n=2, scale="none")
    assert flat.tolist() == [0.0, 0.0, -0.5, 0.5] and zero.tolist() == [True, False]


def test_clipped_ratio_loss_and_kl_by_hand() -> None:
    # two completions of 2 and 1 tokens after a 2-token prompt; position 0 never carries a label
    labels = torch.tensor([[-100, -100, 5, 6], [-100, -100, 7, -100]])
    new = torch.tensor([[0.0, 0.0, -1.0, -2.0], [0.0, 0.0, -0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[0.0, 0.0, -1.5, -2.0], [0.0, 0.0, -0.2, 0.0]], dtype=torch.float64)
    ref = torch.tensor([[0.0, 0.0, -1.2, -1.0], [0.0, 0.0, -0.6, 0.0]], dtype=torch.float64)
    batch = {"labels": labels, "old_log_probs": old, "ref_log_probs": ref, "advantages": torch.tensor([1.0, -2.0])}
    loss, extra = ClippedRatioLoss(epsilon=0.2, beta=0.1, total_tokens=3)(new, batch)
    terms, kls = [], []
    for a, n, o, r in [(1.0, -1.0, -1.5, -1.2), (1.0, -2.0, -2.0, -1.0), (-2.0, -0.5, -0.2, -0.6)]:
        rho = math.exp(n - o)
        kl = math.exp(r - n) - (r - n) - 1
        terms.append(-min(rho * a, min(max(rho, 0.8), 1.2) * a) + 0.1 * kl)
        kls.append(kl)
    assert float(loss) == pytest.approx(sum(terms) / 3, abs=1e-12)
    assert extra["kl"] == pytest.approx(sum(kls) / 3, abs=1e-12)
    assert extra["clipped"] == pytest.approx(2 / 3)  # e^0.5 > 1.2 with A > 0, e^-0.3 < 0.8 with A < 0: no gradient
    loss.backward()
    # token 1: rho = e^0.5 clipped with A > 0, so only the KL term has a gradient there
    assert float(new.grad[0, 2]) == pytest.approx(0.1 * (1 - math.exp(-1.2 + 1.0)) / 3, abs=1e-12)


class TinyTokenizer:
    pad_token_id, eos_token_id = 0, None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def _tiny_trainer(**config: object) -> lorakit.Trainer:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=8, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                         initializer_range=0.5))  # fmt: skip
    cfg = dict(objective="grpo", reward="x", r=4, lora_alpha=8, precision="fp32", max_steps=8, lr=0.05, batch_size=16,
               num_generations=8, max_completion_length=4, warmup_steps=0, lr_schedule="constant")  # fmt: skip
    return lorakit.Trainer(model, TinyTokenizer(), lorakit.TrainConfig(**{**cfg, **config}))  # type: ignore[arg-type]


def share_of_fives(completions: list[str], **_: object) -> list[float]:
    return [c.split().count("5") / len(c.split()) for c in completions]


def test_a_group_of_equal_rewards_gives_zero_gradient() -> None:
    trainer = _tiny_trainer()
    records = [PromptRecord([2, 3, 4]), PromptRecord([6, 7])]  # type: ignore[arg-type]
    constant = Reward("constant", lambda completions, **_: [0.7] * len(completions))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    metrics = grpo_step(trainer, records, [constant])
    assert metrics["frac_reward_zero_std"] == 1.0 and metrics["grad_norm"] == 0.0
    assert metrics["reward/mean"] == pytest.approx(0.7) and metrics["reward/std"] == pytest.approx(0.0, abs=1e-12)
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in before.items()), "AdamW with a zero gradient moves nothing"


def test_a_reward_that_prefers_one_token_makes_it_likelier(tmp_path: Path) -> None:
    trainer = _tiny_trainer()
    records = [PromptRecord([2, 3, 4]), PromptRecord([6, 7])]  # type: ignore[arg-type]
    fives = [Completion(i, r.prompt, [5, 5, 5, 5], [0.0] * 4, "", False) for i, r in enumerate(records)]  # type: ignore[arg-type]
    probe = completion_batch(fives, pad_id=0)

    def p5() -> float:  # mean probability of a 5 at each completion position, after 5s, for both prompts
        return float(trainer.log_probs(probe)[probe["labels"] != -100].exp().mean())

    start = p5()
    history = train_grpo(trainer, records, [load_reward(f"{Path(__file__)}:share_of_fives")], progress=False)
    assert [m["step"] for m in history] == list(range(1, 9))
    assert p5() > 2 * start, f"p(5) went from {start:.3f} to {p5():.3f}"
    assert history[-1]["reward/mean"] > history[0]["reward/mean"]
    for key in ("rewards/" + f"{Path(__file__)}:share_of_fives/mean", "completion_length", "seconds_sampling",
                "seconds_training", "clipped", "frac_reward_zero_std"):  # fmt: skip
        assert key in history[0], key


def test_kl_is_reported_and_zero_while_the_adapter_is_new() -> None:
    trainer = _tiny_trainer(beta=0.04)
    records = [PromptRecord([2, 3, 4]), PromptRecord([6, 7])]  # type: ignore[arg-type]
    reward = load_reward(f"{Path(__file__)}:share_of_fives")
    first = grpo_step(trainer, records, [reward])
    assert first["kl"] == pytest.approx(0.0, abs=1e-9), "B = 0: the policy is its reference"
    second = grpo_step(trainer, records, [reward])
    assert second["kl"] > 0


def test_built_in_rewards(tmp_path: Path) -> None:
    prompts = ["p"] * 4
    completions = ['{"a": 1}', " [1, 2]", 'x {"a": 1}', ' {"name": "Ann", "email": null, "phone": null, '
                   '"company": null, "city": "Oslo"} ']  # fmt: skip
    ids = [[1]] * 4
    assert score(load_reward("json"), prompts, completions, ids, {}) == [1.0, 0.0, 0.0, 1.0]
    ref = '{"name": "Ann", "email": null, "phone": null, "company": null, "city": "Lyon"}'
    got = score(load_reward("contacts"), prompts, completions, ids, {"reference": [ref] * 4})
    assert got == [0.0, 0.0, 0.0, 0.8]  # four of the five fields right
    exact = score(load_reward("exact"), prompts, ["a ", "b", "a", "a"], ids, {"reference": ["a", "a", None, "a"]})
    assert exact[:2] == [1.0, 0.0] and math.isnan(exact[2]) and exact[3] == 1.0
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "required": ["a"]}')
    assert score(load_reward(f"json-schema:{schema}"), prompts, completions, ids, {}) == [1.0, 0.0, 0.0, 0.0]
    conversation = [[{"role": "assistant", "content": '{"a": 2}'}]]
    assert score(load_reward("json"), ["p"], conversation, [[1]], {}) == [1.0]


def test_bad_rewards_are_one_line_errors_naming_the_function(tmp_path: Path) -> None:
    module = tmp_path / "my_rewards.py"
    module.write_text("def boom(completions, **kw):\n    raise KeyError('answer')\n"
                      "def short(completions, **kw):\n    return [1.0]\n"
                      "def text(completions, **kw):\n    return ['1'] * len(completions)\n")  # fmt: skip
    cases = [
        (f"{tmp_path}/nope.py:f", "no such file"),
        ("lorakit_no_such_module:f", "cannot import module 'lorakit_no_such_module'"),
        (f"{module}:missing", "has no function 'missing'"),
        ("nonsense", "not a built-in reward"),
    ]
    for name, message in cases:
        with pytest.raises(LorakitError, match=message) as err:
            load_reward(name)
        assert "\n" not in str(err.value) and name in str(err.value)
    for function, message in [("boom", "raised KeyError: 'answer'"), ("short", "returned 1 values for 2 completions"),
                              ("text", "returned '1' for completion 0")]:  # fmt: skip
        with pytest.raises(LorakitError, match=message) as err:
            score(load_reward(f"{module}:{function}"), ["p", "q"], ["a", "b"], [[1], [2]], {})
        assert f"{module}:{function}" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LorakitError, match="at least one"):
        load_rewards([])


def test_prompt_records_keep_the_reference_and_the_other_columns() -> None:
    records = read_prompts([
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": 4},
        {"prompt": "Say hi:", "completion": " hi"},
        {"prompt": [{"role": "user", "content": "q2"}], "level": "easy"},
    ])  # fmt: skip
    assert records[0] == PromptRecord([{"role": "user", "content": "q"}], "a", {"answer": 4})
    assert records[1] == PromptRecord("Say hi:", " hi", {})
    assert records[2] == PromptRecord([{"role": "user", "content": "q2"}], None, {"level": "easy"})
    with pytest.raises(lorakit.DataError, match="record 1: a prompt record needs 'messages' or 'prompt'"):
        read_prompts([{"text": "x"}])


def test_grpo_config_errors_name_the_flag() -> None:
    with pytest.raises(ValueError, match="--reward is needed"):
        lorakit.TrainConfig(objective="grpo")
    with pytest.raises(ValueError, match="--batch-size .* multiple of --num-generations"):
        lorakit.TrainConfig(objective="grpo", reward="json", batch_size=6, num_generations=4)
    with pytest.raises(ValueError, match="--reward-weights gives 1 weights for 2 rewards"):
        lorakit.TrainConfig(objective="grpo", reward="json,exact", reward_weights="2")
    with pytest.raises(ValueError, match="--top-p"):
        lorakit.TrainConfig(top_p=0)
    assert (
        lorakit.TrainConfig(objective="dpo").beta == 0.1
        and lorakit.TrainConfig(objective="grpo", reward="json").beta == 0
    )
    assert lorakit.TrainConfig(objective="grpo", reward="json, exact", reward_weights="1,0.5").rewards() == [
        ("json", 1.0),
        ("exact", 0.5),
    ]


def test_the_grpo_example_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    """examples/grpo_loop.py (docs/library.md's loop) for two steps on a tiny model; it writes a peft adapter."""
    import json
    import runpy

    example = runpy.run_path(str(Path(__file__).resolve().parents[2] / "examples" / "grpo_loop.py"))
    out = tmp_path / "grpo"
    rewards = example["main"](["--model", str(tiny_model_dir), "--steps", "2", "--prompts", "2", "--generations", "2",
                               "--max-new-tokens", "6", "--output", str(out)])  # fmt: skip
    assert len(rewards) == 2 and all(0.0 <= r <= 1.0 for r in rewards)
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
