"""Every flag of every command explains itself; the names TRL and peft users type are accepted."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from lorakit.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", list(_commands()))
def test_every_flag_has_help_with_its_default_and_allowed_values(name: str, capsys: pytest.CaptureFixture) -> None:
    command = _commands()[name]
    for action in command._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = action.help or ""
        flag = action.option_strings[0]
        assert len(text) > 8, f"{name} {flag} has no help text"
        if action.choices:
            assert all(str(c) in text for c in action.choices), f"{name} {flag}: allowed values not listed: {text}"
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert "default" in text, f"{name} {flag}: no default in {text!r}"
        if action.default is argparse.SUPPRESS and flag not in ("--debug", "--config"):
            assert "(default: " in text, f"{name} {flag}: no default in {text!r}"
    with pytest.raises(SystemExit):
        main([name, "--help"])
    assert "usage: lorakit " + name in capsys.readouterr().out


def test_literal_fields_list_their_values_in_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "one of cosine, linear, constant" in text
    assert "one of auto, fp32, bf16" in text
    assert "one of auto, chat, completion, text, sharegpt, alpaca" in text


def test_trl_and_peft_names_are_aliases() -> None:
    from lorakit.cli.common import train_config_from
    from lorakit.cli.train import RunConfig

    args = build_parser().parse_args(["train", "--lora-r", "8", "--learning-rate", "3e-4", "--num-train-epochs", "2",
                                      "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2",
                                      "--lora-target-modules", "q_proj,v_proj", "--max-seq-length", "512",
                                      "--lr-scheduler-type", "linear", "--output-dir", "runs/x"])  # fmt: skip
    config = train_config_from(args, RunConfig)
    assert (config.r, config.lr, config.epochs, config.batch_size, config.grad_accum) == (8, 3e-4, 2.0, 4, 2)
    assert (config.target_modules, config.seq_len, config.lr_schedule, config.output) == (
        "q_proj,v_proj",
        512,
        "linear",
        "runs/x",
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["plan", "--data", "x"],
            "plan: unknown flag --data: lorakit plan has no --data (train, eval, compare take it)",
        ),
        (["train", "--lora-rnk", "4"], "train: unknown flag --lora-rnk (did you mean --lora-rank?)"),
        (["eval", "--adaptor", "x"], "eval: unknown flag --adaptor (did you mean --adapter?)"),
    ],
)
def test_unknown_flags_suggest_a_flag_of_the_command_run(argv: list[str], expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lorakit", *argv], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"lorakit: error: {expected}"


def test_no_flags_is_the_demo_and_data_defaults_to_epochs() -> None:
    from lorakit.cli.common import train_config_from
    from lorakit.cli.train import RunConfig

    demo = train_config_from(build_parser().parse_args(["train"]), RunConfig)
    assert (demo.max_steps, demo.lr, demo.seq_len, demo.seed, demo.batch_size, demo.warmup_steps) == (
        240,
        1e-3,
        384,
        0,
        8,
        5,
    )
    mine = train_config_from(build_parser().parse_args(["train", "--data", "mine.jsonl"]), RunConfig)
    assert (mine.max_steps, mine.epochs, mine.lr) == (0, 3.0, 2e-4)
    full = train_config_from(build_parser().parse_args(["train", "--data", "m.jsonl", "--method", "full"]), RunConfig)
    assert full.lr == 2e-5
    tuned = train_config_from(build_parser().parse_args(["train", "--lr", "5e-4"]), RunConfig)
    assert (tuned.max_steps, tuned.lr) == (240, 5e-4)  # a flag beats the demo's setting
