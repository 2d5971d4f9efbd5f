from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from hypothesis import settings

# Every property test runs this many examples (about a second for the slowest, test_fuzz's); the
# thorough profile runs ten times as many: HYPOTHESIS_PROFILE=thorough make test.
settings.register_profile("ci", max_examples=100)
settings.register_profile("thorough", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """llama.cpp tests (marker ``llamacpp``) run only when ``-m`` names them (``make test-llamacpp``): they need a
    llama-cpp-python built from source and take minutes, so the default suite leaves them out."""
    if "llamacpp" in (config.option.markexpr or ""):
        return
    skipped = [item for item in items if item.get_closest_marker("llamacpp")]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [item for item in items if not item.get_closest_marker("llamacpp")]


@pytest.fixture(scope="session")
def smollm2():
    """The built-in SmolLM2-135M-Instruct (model, tokenizer), loaded once; tests must not modify it."""
    import lorakit

    return lorakit.load_model()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The built-in model's real tokenizer (ChatML template, eos/pad = <|im_end|>), loaded without the weights:
    tests/test_models.py checks it is the one load_model gives."""
    from lorakit.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer):
    """A tiny random Llama with the real SmolLM2 tokenizer and chat template, saved as a transformers folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def small_chat_data(tmp_path_factory):
    """24 built-in contacts examples as a JSONL file."""
    from lorakit.tasks.contacts import builtin_path

    folder = tmp_path_factory.mktemp("data")
    lines = builtin_path("train").read_text(encoding="utf-8").splitlines()[:24]
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``lorakit ARGS`` through lorakit.cli.main in this process, as a CompletedProcess: no interpreter start-up to
    pay per command where a subprocess would prove nothing more (stdin from ``stdin=``)."""
    from lorakit.cli import main

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's errors
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run
