"""lorakit eval on a user's own chat file: the task picked from the data, base and adapter side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorakit.eval.metrics import score_replies, token_f1


def test_metrics_against_hand_computed_values() -> None:
    assert token_f1("The cat sat on the mat", "a cat sat") == pytest.approx(2 * (2 / 4) * (2 / 2) / (2 / 4 + 2 / 2))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    means, rows = score_replies(["the cat sat", "dog"], ["the cat sat", "a black dog barked"])
    assert [r["exact_match"] for r in rows] == [1.0, 0.0]
    # ROUGE-L F of "dog" against "a black dog barked": LCS 1, precision 1/1, recall 1/4 -> 2 * 1 * 0.25 / 1.25 = 0.4
    assert rows[1]["rouge_l"] == pytest.approx(0.4)
    assert means["exact_match"] == 0.5 and "json_valid" not in means
    means, rows = score_replies(['{"b": 2, "a": 1}', '{"a": 1, "b": 3}', "not json"],
                                ['{"a": 1, "b": 2}', '{"a": 1, "b": 2}', '{"a": 1}'])  # fmt: skip
    assert [r["exact_match"] for r in rows] == [1.0, 0.0, 0.0]  # key order and spacing do not count
    assert [r["json_valid"] for r in rows] == [1.0, 1.0, 0.0]
    assert [r["field_accuracy"] for r in rows] == [1.0, 0.5, 0.0]


def test_eval_of_an_adapter_on_a_hand_made_chat_file(tiny_model_dir: Path, tmp_path: Path, run_cli) -> None:
    records = [
        {"messages": [{"role": "user", "content": f"Colour of item {i}?"},
                      {"role": "assistant", "content": json.dumps({"item": i, "colour": "red"})}]}
        for i in range(6)
    ]  # fmt: skip
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = tmp_path / "run"
    train = ["--model", str(tiny_model_dir), "--data", str(data), "--output", str(run), "--max-steps", "3"]
    done = run_cli("train", *train, "--batch-size", "3", "--r", "4", "--lr", "1e-2", "--precision", "fp32")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "eval.json"
    done = run_cli("eval", "--adapter", str(run), "--data", str(data), "--output", str(out), "--max-new-tokens", "6")
    assert done.returncode == 0, done.stderr
    table = done.stdout.splitlines()
    assert table[0] == "| model | n | exact_match | token_f1 | rouge_l | json_valid | field_accuracy |"
    assert table[2].startswith("| base model | 6 |") and table[3].startswith("| with adapter | 6 |")
    result = json.loads(out.read_text())
    assert result["task"] == "generation"
    for side in ("base", "adapter"):
        predictions = result[side]["predictions"]
        assert [p["reference"] for p in predictions] == [r["messages"][1]["content"] for r in records]
        assert [p["prompt"] for p in predictions] == [r["messages"][0]["content"] for r in records]
        means, rows = score_replies([p["reply"] for p in predictions], [p["reference"] for p in predictions])
        assert result[side]["exact_match"] == means["exact_match"] and result[side]["rouge_l"] == means["rouge_l"]
        assert [p["rouge_l"] for p in predictions] == [r["rouge_l"] for r in rows]


def test_text_data_picks_the_loss_task(tiny_model_dir: Path, tmp_path: Path, run_cli) -> None:
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"Line number {i} of a story."}) + "\n" for i in range(4)))
    done = run_cli("eval", "--model", str(tiny_model_dir), "--data", str(data))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "| model | n | tokens | loss | perplexity |"
