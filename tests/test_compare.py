"""lorakit compare: the knowledge data set's guarantees, method parsing, and a --quick run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorakit.cli.compare import MethodSpec, parse_methods, run_compare
from lorakit.data.jsonl import read_jsonl
from lorakit.errors import LorakitError
from lorakit.plan import PlanSettings, plan_methods
from lorakit.tasks import knowledge


def test_knowledge_set_is_reproducible_and_tests_unseen_wording(tmp_path: Path) -> None:
    paths = knowledge.write_builtin(tmp_path)
    for split in ("train", "test"):
        assert paths[split].read_bytes() == knowledge.builtin_path(split).read_bytes(), "regenerate and commit"
    facts = knowledge.facts()
    assert len(facts) >= 200
    assert len({f["entity"] for f in facts}) == len(facts), "one fact per entity"
    train, test = read_jsonl(paths["train"]), read_jsonl(paths["test"])
    asked = {r["messages"][0]["content"] for r in train}
    assert not asked.intersection(r["messages"][0]["content"] for r in test)
    # every test answer is taught in training, under the same entity
    taught = " ".join(r["messages"][1]["content"] for r in train)
    assert all(r["messages"][1]["content"] in taught for r in test)
    assert knowledge.normalise(" Paris. ") == knowledge.normalise("paris")


def test_method_specs() -> None:
    assert parse_methods("full, lora:r=8,lora:r=64:lr=5e-4") == [
        MethodSpec("full", 16, 1e-4), MethodSpec("lora", 8, 1e-3), MethodSpec("lora", 64, 5e-4)
    ]  # fmt: skip
    with pytest.raises(LorakitError, match="not a training method"):
        parse_methods("sledgehammer")
    with pytest.raises(LorakitError, match="options are r=N and lr=X"):
        parse_methods("lora:rank=8")


@pytest.mark.slow  # four `lorakit train` processes, ~20 s of start-up on 2 cores: the whole command, end to end
def test_quick_compare_writes_report_and_plots(tiny_model_dir: Path, tmp_path: Path) -> None:
    methods = parse_methods("full,lora:r=4")
    report = run_compare(["format", "knowledge"], methods, None, True, tmp_path, model=str(tiny_model_dir))
    text = report.read_text()
    assert text.startswith("# lorakit compare") and "- machine:" in text and "- command:" in text
    for name in ("score_vs_params.png", "learning_vs_forgetting.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [(r["task"], r["label"]) for r in results] == [
        ("format", "base"), ("knowledge", "base"), ("format", "full"), ("format", "lora r=4"),
        ("knowledge", "full"), ("knowledge", "lora r=4"),
    ]  # fmt: skip
    config = json.loads((tiny_model_dir / "config.json").read_text())
    settings = PlanSettings(r=4, target_modules="all-linear")
    plans = plan_methods(str(tiny_model_dir), settings, ("full", "lora"))[2]
    assert config["model_type"] == "llama"
    for r in results[2:]:
        expected = plans["full" if r["method"] == "full" else "lora"].trainable
        assert r["trainable"] == expected, "what trained is what lorakit plan counts"
        assert r["disk_bytes"] > 0 and r["peak_rss"] > 0 and r["seconds_per_step"] > 0
        assert 0 <= r["score"]["exact_match"] <= 1 and r["probe"]["perplexity"] > 0
    full_bytes = next(r["disk_bytes"] for r in results if r["method"] == "full")
    lora_bytes = next(r["disk_bytes"] for r in results if r["method"] == "lora")
    assert full_bytes > 50 * lora_bytes
