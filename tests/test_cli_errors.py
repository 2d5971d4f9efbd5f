"""Every user mistake through the real CLI entry point: exit code 2, one line naming the culprit, nothing written.

Each case runs ``lorakit.cli.main`` (what the ``lorakit`` script calls) in this process, which is what makes
two dozen cases cheap; tests/test_cli.py runs one error and ``--debug`` as real subprocesses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import lorakit
from lorakit.cli import main
from lorakit.config import LoraConfig
from tests.tiny import cli_error_line

GOOD = '{"prompt": "Name?", "completion": "Ada"}\n'


def _files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---- data files: `lorakit train --data FILE`; the line says FILE:LINE where there is a line
DATA_CASES: dict[str, tuple[bytes, str]] = {
    "malformed JSON line": ((GOOD + "\n" + '{"prompt": "a", "completion": \n').encode(), "data.jsonl:3:"),
    "missing messages": ((GOOD + '{"conversation": []}\n').encode(), "data.jsonl:2:"),
    "message without content": (b'{"messages": [{"role": "user"}]}\n', "data.jsonl:1:"),
    "unknown role": (b'{"messages": [{"role": "robot", "content": "hi"}]}\n', "data.jsonl:1:"),
    "non-string content": (b'{"messages": [{"role": "user", "content": 7}]}\n', "data.jsonl:1:"),
    "prompt without completion": ((GOOD * 2 + '{"prompt": "Name?"}\n').encode(), "data.jsonl:3:"),
    "empty dataset": (b"\n\n", "data.jsonl"),
    "not UTF-8": (GOOD.encode() + b'{"prompt": "caf\xe9", "completion": "x"}\n', "data.jsonl"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_file(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content, where = DATA_CASES[case]
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    out = tmp_path / "run"
    line = cli_error_line(capsys, ["train", "--data", str(data), "--output", str(out)])
    assert where in line
    assert not out.exists(), _files_under(out)


def test_every_example_longer_than_seq_len(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "word " * 50, "completion": "Ada"}) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out), "--seq-len", "8"]
    line = cli_error_line(capsys, argv)
    assert "long.jsonl" in line and "--seq-len" in line
    assert not out.exists(), _files_under(out)


# ---- flags and config files
@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["train", "--lora-alfa", "8"], ["--lora-alfa", "--lora-alpha"]),
        (["train", "--r", "eight"], ["--r"]),
        (["train", "--r", "0"], ["--r", "positive"]),
        (["train", "--pad-to-multiple-of", "0"], ["--pad-to-multiple-of", "positive"]),
        (["train", "--lora-dropout", "1.5"], ["--lora-dropout"]),
        (["train", "--precision", "fp8"], ["--precision"]),
        (["eval", "--limit", "-3"], ["--limit"]),
        (["generate", "--prompt", "hi", "--max-new-tokens", "x"], ["--max-new-tokens"]),
    ],
    ids=[
        "unknown flag",
        "wrong type",
        "out of range",
        "pad multiple",
        "dropout range",
        "bad choice",
        "eval limit",
        "generate",
    ],
)
def test_bad_flags(argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    line = cli_error_line(capsys, argv)
    for fragment in fragments:
        assert fragment in line


def test_unknown_config_key_suggests_the_closest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("lora_alfa: 8\n", encoding="utf-8")
    out = tmp_path / "run"
    line = cli_error_line(capsys, ["train", "--config", str(config), "--output", str(out)])
    assert "run.yaml" in line and "lora_alfa" in line and ("lora-alpha" in line or "lora_alpha" in line)
    assert not out.exists()


def test_config_value_of_the_wrong_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("batch_size: many\n", encoding="utf-8")
    line = cli_error_line(capsys, ["train", "--config", str(config), "--output", str(tmp_path / "run")])
    assert "batch" in line
    assert not (tmp_path / "run").exists()


# ---- models and adapters
def _adapter_on(model_dir_or_model: torch.nn.Module, folder: Path) -> Path:
    lorakit.add_adapter(model_dir_or_model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lorakit.save_adapter(model_dir_or_model, folder)
    return folder


@pytest.fixture(scope="module")
def good_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = lorakit.load_model(str(tiny_model_dir))
    return _adapter_on(model, tmp_path_factory.mktemp("good-adapter"))


def _copy(folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in folder.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def _other_base_adapter(tmp: Path, good: Path) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    return _adapter_on(LlamaForCausalLM(config), tmp / "other-base")


def _truncated(tmp: Path, good: Path) -> Path:
    folder = _copy(good, tmp / "truncated")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    return folder


def _corrupted(tmp: Path, good: Path) -> Path:
    folder = _copy(good, tmp / "corrupted")
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    return folder


def _wrong_typed_config(tmp: Path, good: Path) -> Path:
    folder = _copy(good, tmp / "wrong-type")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = "eight"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


ADAPTER_CASES: dict[str, tuple[Callable[[Path, Path], Path], list[str]]] = {
    "missing": (lambda tmp, good: tmp / "no-such-adapter", ["no-such-adapter"]),
    "for another base": (_other_base_adapter, ["other-base", "q_proj", "(2, 48)", "(2, 32)"]),
    "truncated safetensors": (_truncated, ["truncated", "adapter_model.safetensors"]),
    "corrupted safetensors": (_corrupted, ["corrupted", "adapter_model.safetensors"]),
    "config field of the wrong type": (_wrong_typed_config, ["wrong-type", "adapter_config.json", "r"]),
}


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
@pytest.mark.parametrize("command", ["eval", "merge"])
def test_bad_adapter(
    case: str,
    command: str,
    tiny_model_dir: Path,
    good_adapter: Path,
    small_chat_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make, fragments = ADAPTER_CASES[case]
    adapter = make(tmp_path, good_adapter)
    out = tmp_path / ("metrics.json" if command == "eval" else "merged")
    argv = [command, "--model", str(tiny_model_dir), "--adapter", str(adapter), "--output", str(out)]
    if command == "eval":
        argv += ["--task", "loss", "--data", str(small_chat_data)]
    line = cli_error_line(capsys, argv)
    for fragment in fragments:
        assert fragment in line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_missing_model_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["generate", "--prompt", "hi"], ["merge", "--adapter", str(tmp_path), "--output", "x"]):
        line = cli_error_line(capsys, [*argv, "--model", str(tmp_path / "no-model")])
        assert "no-model" in line
    assert not Path("x").exists()


def test_a_finished_run_is_not_overwritten(
    tiny_model_dir: Path, small_chat_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    common = ["train", "--model", str(tiny_model_dir), "--data", str(small_chat_data), "--output", str(out)]
    assert main([*common, "--max-steps", "1", "--batch-size", "2", "--precision", "fp32"]) == 0
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    line = cli_error_line(capsys, [*common, "--max-steps", "2"])
    assert str(out) in line and "--overwrite" in line
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_remote_code_needs_the_flag(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model folder whose config points at its own Python code: refused, and the code never runs."""
    folder = _copy(tiny_model_dir, tmp_path / "custom-model")
    marker = tmp_path / "code-ran"
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="lorakit-custom", auto_map={"AutoConfig": "custom.CustomConfig",
                                                         "AutoModelForCausalLM": "custom.CustomModel"})  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    for argv in (["generate", "--prompt", "hi"], ["serve"]):
        line = cli_error_line(capsys, [*argv, "--model", str(folder)])
        assert "custom-model" in line and "--trust-remote-code" in line
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017 - with the flag the code runs (and, being no model, fails)
        lorakit.load_model(str(folder), trust_remote_code=True)
    assert marker.exists()
