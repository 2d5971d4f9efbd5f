"""The command line: one-line errors with exit code 2, and the commands on a tiny model."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from transformers import AutoModelForCausalLM

import lorakit
from lorakit.cli import main
from lorakit.config import LoraConfig


def _process(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m lorakit args`` in a real process: what a shell sees."""
    return subprocess.run([sys.executable, "-m", "lorakit", *args], capture_output=True, text=True, timeout=300)


def _run(*args: str, input: str = "") -> subprocess.CompletedProcess[str]:
    """``lorakit args`` in this process (lorakit.cli.main, what the script calls), seen as a finished process."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch("sys.stdin", io.StringIO(input)), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["lorakit", *args], code, out.getvalue(), err.getvalue())


def _one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorakit: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_data_file(tmp_path: Path) -> None:
    """A real process (the other errors run in-process, here and in tests/test_cli_errors.py)."""
    _one_line_error(_process("train", "--data", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o")),
                    "nope.jsonl", "no such file")  # fmt: skip


def test_missing_model_path(tmp_path: Path, small_chat_data: Path) -> None:
    _one_line_error(
        _run("train", "--model", str(tmp_path / "no-model"), "--data", str(small_chat_data), "--output",
             str(tmp_path / "o")),
        "no-model", "no such model folder",
    )  # fmt: skip


def test_unknown_flag_suggests_the_closest() -> None:
    _one_line_error(_run("train", "--lora-alfa", "3"), "unknown flag --lora-alfa", "did you mean --lora-alpha?")


def test_bad_value_names_the_flag() -> None:
    _one_line_error(_run("train", "--r", "zero"), "--r")
    _one_line_error(_run("train", "--lr-schedule", "step"), "--lr-schedule must be one of")


def test_unknown_yaml_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("lora-alpha: 16\nlora_alfa: 0.1\n")
    _one_line_error(_run("train", "--config", str(config)), "c.yaml", "unknown key 'lora_alfa'")


def test_missing_adapter(tmp_path: Path) -> None:
    _one_line_error(_run("generate", "--adapter", str(tmp_path / "none"), "--prompt", "hi"), "no such adapter folder")


def test_yaml_config_and_flags_combine(tmp_path: Path) -> None:
    import argparse

    from lorakit.cli import build_parser
    from lorakit.cli.common import train_config_from
    from lorakit.cli.train import RunConfig

    config = tmp_path / "c.yaml"
    config.write_text("lora-alpha: 64\nr: 4\nmax_steps: 7\n")
    args = build_parser().parse_args(["train", "--config", str(config), "--r", "8"])
    assert isinstance(args, argparse.Namespace)
    cfg = train_config_from(args, RunConfig)
    assert (cfg.lora_alpha, cfg.r, cfg.max_steps, cfg.lr) == (64, 8, 7, 1e-3)


def _example_configs() -> list[Path]:
    return sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", _example_configs(), ids=lambda p: p.name)
def test_shipped_example_configs_load(path: Path) -> None:
    from lorakit.cli import build_parser
    from lorakit.cli.common import train_config_from
    from lorakit.cli.train import RunConfig

    train_config_from(build_parser().parse_args(["train", "--config", str(path)]), RunConfig)


def test_merge_export_loads_in_plain_transformers(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, _ = lorakit.load_model(str(tiny_model_dir))
    lorakit.add_adapter(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    lorakit.save_adapter(model, tmp_path / "adapter")
    x = torch.tensor([[1, 520, 9531, 198, 2683, 359]])
    with torch.no_grad():
        expected = model(x).logits
    assert main(["merge", "--model", str(tiny_model_dir), "--adapter", str(tmp_path / "adapter"),
                 "--output", str(tmp_path / "merged")]) == 0  # fmt: skip
    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert "chat_template.jinja" in files or "chat_template" in (tmp_path / "merged/tokenizer_config.json").read_text()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, expected, atol=1e-5, rtol=1e-5)


def test_eval_loss_and_contacts_on_tiny_model(tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    assert main(["eval", "--task", "loss", "--model", str(tiny_model_dir), "--data", str(small_chat_data),
                 "--output", str(out)]) == 0  # fmt: skip
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 24 and metrics["perplexity"] > 1
    out = tmp_path / "c.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--limit", "4", "--batch-size", "2",
                 "--output", str(out)]) == 0  # fmt: skip
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 4 and len(metrics["predictions"]) == 4
    assert metrics["json_valid"] == 0.0  # a random tiny model does not write JSON


def test_generate_and_chat_run_on_tiny_model(tiny_model_dir: Path) -> None:
    proc = _run("generate", "--model", str(tiny_model_dir), "--prompt", "hello", "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and "error" not in proc.stderr  # a random tiny model may reply in whitespace
    chat = _run("chat", "--model", str(tiny_model_dir), "--max-new-tokens", "3", input="hello\nand again\n/exit\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("assistant> ") == 2, chat.stdout


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = _process("train", "--debug", "--data", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "DataError" in proc.stderr
