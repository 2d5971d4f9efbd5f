"""The base model and system prompt go with the adapter: recorded by lorakit train, found by every command."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorakit.errors import LorakitError
from lorakit.runs.origin import adapter_origin, check_same_base, recorded_name, same_base
from lorakit.tasks.contacts import SYSTEM_PROMPT


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir: Path, small_chat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step lorakit train run on the tiny model with the contacts examples (which share one system prompt)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    from lorakit.cli import main

    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = main(["train", "--model", str(tiny_model_dir), "--data", str(small_chat_data), "--output", str(out),
                     "--max-steps", "2", "--batch-size", "4", "--r", "4", "--precision", "fp32"])  # fmt: skip
    assert code == 0, log.getvalue()
    return out


def test_a_run_records_its_base_and_system_prompt(tiny_run: Path, tiny_model_dir: Path) -> None:
    config = json.loads((tiny_run / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir.resolve())  # absolute: found from any directory
    assert (tiny_run / "system_prompt.txt").read_text(encoding="utf-8") == SYSTEM_PROMPT
    origin = adapter_origin(tiny_run)
    assert (origin.base_model, origin.system_prompt) == (str(tiny_model_dir.resolve()), SYSTEM_PROMPT)
    assert origin.base_for("other") == "other"  # --model overrides


def test_commands_load_the_adapters_base_and_system_prompt_by_themselves(
    tiny_run: Path, tmp_path: Path, run_cli
) -> None:
    # The tiny adapter's shapes fit no other model: these succeed only on the recorded base.
    done = run_cli("generate", "--adapter", str(tiny_run), "--prompt", "hi", "--max-new-tokens", "3")
    assert done.returncode == 0, done.stderr
    assert "base model" in done.stderr and "system prompt it was trained with" in done.stderr
    done = run_cli("merge", "--adapter", str(tiny_run), "--output", str(tmp_path / "merged"))
    assert done.returncode == 0, done.stderr
    done = run_cli("chat", "--adapter", str(tiny_run), "--system", "", "--max-new-tokens", "2", stdin="hi\n/exit\n")
    assert done.returncode == 0 and "system prompt" not in done.stderr, done.stderr  # --system '' : none
    # --model still overrides; a base of other shapes is the one-line error it always was
    done = run_cli("generate", "--adapter", str(tiny_run), "--model", "smollm2-135m-instruct", "--prompt", "hi")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("lorakit: error:"), done.stderr
    assert "adapter_model.safetensors" in done.stderr.splitlines()[-1]  # the adapter does not fit that base


def test_serve_uses_the_adapters_base_and_refuses_another(tiny_run: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from lorakit.serve.app import with_system_prompt
    from lorakit.serve.server import build_state

    other = tmp_path / "other-model"
    other.mkdir()
    with pytest.raises(LorakitError, match=r"trained on .*, not on .*other-model, which this server serves"):
        build_state(str(other), {"tiny": tiny_run}, None)  # refused before any model is loaded
    with pytest.raises(LorakitError, match="not on the built-in"):
        check_same_base(tiny_run, None)
    state = build_state(None, {"tiny": tiny_run}, None, dtype="fp32")  # no --model: the adapter's base
    try:
        assert state.base_model == str(tiny_model_dir.resolve())
        asked = [{"role": "user", "content": "hi"}]
        assert with_system_prompt(state, "tiny", asked)[0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert with_system_prompt(state, None, asked) == asked  # the base model gets no adapter's prompt
        own = [{"role": "system", "content": "mine"}, *asked]
        assert with_system_prompt(state, "tiny", own) == own
    finally:
        state.engine.close()


def test_names_and_comparisons(tiny_model_dir: Path) -> None:
    assert recorded_name(None) == recorded_name("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert recorded_name("org/model") == "org/model"
    assert same_base(None, "HuggingFaceTB/SmolLM2-135M-Instruct") and not same_base(None, "org/model")
    assert same_base(str(tiny_model_dir), str(tiny_model_dir / ".." / tiny_model_dir.name))


@pytest.mark.integration
def test_builtin_run_card_and_peft_resolves_its_base_from_the_hub_name(
    tmp_path: Path, small_chat_data: Path, run_cli
) -> None:
    """A built-in run records the Hub name; peft's AutoPeftModelForCausalLM loads base + adapter from the run folder
    alone, on a machine where that name resolves: here an offline Hub cache (HF_HOME) whose snapshot of the model
    holds the built-in copy's files, made in the test from builtin_model_dir()."""
    import torch
    from huggingface_hub import ModelCard

    import lorakit
    from lorakit.models import BUILTIN_HUB_ID, builtin_model_dir

    run = tmp_path / "run"
    done = run_cli("train", "--data", str(small_chat_data), "--output", str(run), "--max-steps", "1",
                   "--batch-size", "2", "--precision", "fp32")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == BUILTIN_HUB_ID
    card = ModelCard.load(run / "README.md")
    assert card.data.base_model == BUILTIN_HUB_ID and card.data.library_name == "peft"
    assert f"base_model:adapter:{BUILTIN_HUB_ID}" in card.data.tags
    assert "Q4_1 GGUF" in card.text

    hf_home = tmp_path / "hf"
    repo = hf_home / "hub" / ("models--" + BUILTIN_HUB_ID.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in builtin_model_dir().iterdir():
        (snapshot / file.name).symlink_to(file)
    ids = [[1, 504, 3458, 314, 260, 1345, 30]]
    script = (
        "import json, sys, torch\nfrom peft import AutoPeftModelForCausalLM\n"
        f"model = AutoPeftModelForCausalLM.from_pretrained({str(run)!r}).eval()\n"
        "assert model.base_model.model.config.vocab_size == 49152\n"
        f"with torch.no_grad(): print(json.dumps(model(torch.tensor({ids})).logits[0, -1, :50].tolist()))\n"
    )
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    peft_run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert peft_run.returncode == 0, peft_run.stderr
    theirs = torch.tensor(json.loads(peft_run.stdout.strip().splitlines()[-1]))
    model, _ = lorakit.load_model()
    lorakit.load_adapter(model, run)
    with torch.no_grad():
        ours = model(torch.tensor(ids)).logits[0, -1, :50]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
