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
