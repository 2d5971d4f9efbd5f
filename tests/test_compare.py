"""lorakit compare: the knowledge data set's guarantees, method parsing, the rate chosen on validation, forgetting at
equal task score against hand-computed values, the probe's matching, and the command on a user's chat file:
interrupted, continued, and re-used by another list of methods, with the trials that trained observed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lorakit.cli import main
from lorakit.cli.compare import report as compare_report
from lorakit.cli.compare import run_compare
from lorakit.cli.compare import trials as compare_trials
from lorakit.cli.compare.analysis import at_edge, best_rate, equal_score, forgetting_at, frontier, mean_std
from lorakit.cli.compare.report import BEGIN, END, refresh_docs
from lorakit.cli.compare.score import answered, probe_questions
from lorakit.cli.compare.setup import ALL_LINEAR, BUDGETS, MethodSpec, builtin_setup, parse_methods
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
    # today's syntax still reads; no lr means swept
    assert parse_methods("full, lora:r=8,lora:r=64:lr=5e-4") == [
        MethodSpec("full"), MethodSpec("lora", 8), MethodSpec("lora", 64, lrs=(5e-4,))
    ]  # fmt: skip
    spec = parse_methods("lora:r=16:targets=q_proj+v_proj:lr=3e-3+1e-3:alpha=16")[0]
    assert (spec.targets, spec.lrs, spec.lora_alpha) == ("q_proj,v_proj", (1e-3, 3e-3), 16.0)
    assert (spec.label, spec.slug) == ("lora r=16 (q,v) alpha=16", "lora-r16-q+v-alpha16")
    assert spec.rates({"lora": (1.0, 2.0, 3.0)}, 3) == (1e-3, 3e-3), "its own rates, not the grid's"
    assert MethodSpec("lora").rates({"lora": (1.0, 2.0, 3.0)}, 2) == (2.0, 3.0)
    assert MethodSpec("lora").targets == ALL_LINEAR and MethodSpec("lora").label == "lora r=16"
    with pytest.raises(LorakitError, match="not a training method"):
        parse_methods("sledgehammer")
    with pytest.raises(LorakitError, match=r"join target modules with '\+'"):
        parse_methods("lora:r=16:targets=q_proj,v_proj")
    with pytest.raises(LorakitError, match="options are r=N, targets=a"):
        parse_methods("lora:rank=8")
    with pytest.raises(LorakitError, match="named twice"):
        parse_methods("lora:r=8:lr=1e-3,lora:r=8:lr=3e-3")
    with pytest.raises(LorakitError, match="full fine-tuning trains every weight"):
        parse_methods("full:r=8")
    with pytest.raises(LorakitError, match="lr must be positive numbers"):
        parse_methods("lora:lr=1e-3+x")
    # the budget's line says how many rates were swept, also when --methods gives some methods more
    assert "3 rates swept per method, 3 seed(s)" in BUDGETS["full"].describe()
    assert "3-4 rates swept per method, 2 seed(s)" in BUDGETS["full"].describe(2, (4, 3, 4))


def test_rate_selection_helpers() -> None:
    assert best_rate({1e-4: 0.5, 1e-3: 0.7, 1e-2: 0.7}) == 1e-3, "a tie goes to the lower rate"
    assert best_rate({1e-4: 12.0, 1e-3: 9.0}, higher_is_better=False) == 1e-3
    assert at_edge(1e-2, [1e-4, 1e-3, 1e-2]) == "highest" and at_edge(1e-3, [1e-4, 1e-3, 1e-2]) is None
    assert at_edge(1e-3, [1e-3]) is None
    assert mean_std([0.5, 0.7, 0.9]) == pytest.approx((0.7, 0.2))
    assert mean_std([0.5]) == (0.5, 0.0)


def test_a_peak_not_measured_shows_as_a_dash() -> None:
    assert compare_report._peak([{"peak_rss": None}, {"peak_rss": 3 << 30}, {}]) == "3.22 GB"
    assert compare_report._peak([{"peak_rss": None}]) == "-"


def test_forgetting_at_equal_score_against_hand_computed_values() -> None:
    a = [(0.2, 5.0), (0.4, 8.0), (0.3, 12.0), (0.5, 20.0)]  # (0.3, 12) is beaten by (0.4, 8): off the front
    assert frontier([(0.0, 0.0), *a]) == [(0.0, 0.0), (0.2, 5.0), (0.4, 8.0), (0.5, 20.0)]
    b = [(0.1, -2.0), (0.3, 1.0)]  # learns and lowers the probe's loss: the base point is off its front
    assert frontier([(0.0, 0.0), *b]) == [(0.1, -2.0), (0.3, 1.0)]
    assert forgetting_at([(0.1, -2.0), (0.3, 1.0)], 0.05) == -2.0, "below the front: its first point"
    assert forgetting_at([(0.1, -2.0), (0.3, 1.0)], 0.31) is None, "past the front: not reached"
    c = [(-0.1, 3.0)]  # never beats the base
    d = [(0.06, 2.0)]  # barely learns
    levels, at = equal_score({"a": a, "b": b, "c": c, "d": d})
    # the highest level two methods reach: a 0.5, b 0.3, d 0.06 -> 0.3; levels at 1/4, 1/2, 3/4 and all of it
    assert levels == pytest.approx([0.075, 0.15, 0.225, 0.3])
    # a: 0.075 / 0.2 * 5; 0.15 / 0.2 * 5; 5 + 0.025 / 0.2 * 3; 5 + 0.1 / 0.2 * 3
    assert at["a"] == pytest.approx([1.875, 3.75, 5.375, 6.5])
    # b: flat at -2 below 0.1; then -2 + (level - 0.1) / 0.2 * 3
    assert at["b"] == pytest.approx([-2.0, -1.25, -0.125, 1.0])
    assert at["c"] == [None, None, None, None]
    assert at["d"] == [None, None, None, None], "d's front ends at 0.06, below every level"
    assert equal_score({"c": c}) == ([], {"c": []})
    alone = equal_score({"b": b, "c": c})  # one method learns: its own range
    assert alone[0] == pytest.approx([0.075, 0.15, 0.225, 0.3]) and alone[1]["c"] == [None] * 4


def test_probe_matches_whole_answers_and_its_questions_are_well_formed() -> None:
    assert answered("The answer is 4.", ["4", "four"]) and answered("Seven days.", ["seven", "7"])
    assert not answered("14", ["4"]) and not answered("Parisian", ["Paris"])
    assert answered("It is carbon dioxide (CO2).", ["carbon dioxide"])
    questions = probe_questions()
    assert len(questions) >= 300
    asked = [q["messages"][0]["content"] for q in questions]
    assert len(set(asked)) == len(asked), "no question twice"
    for q in questions:
        assert [m["role"] for m in q["messages"]] == ["user", "assistant"]
        assert all(isinstance(a, str) and a.strip() for a in q["accept"])
        assert not answered(q["messages"][0]["content"], q["accept"]), f"answer in the question: {q}"


def _fake_record(task: str, spec: MethodSpec, lr: float, seed: int, val: float, test: float) -> dict[str, Any]:
    return {"task": task, "label": spec.label, "method": spec.method, "r": spec.r, "targets": spec.targets,
            "lora_alpha": spec.lora_alpha, "lr": lr, "seed": seed, "trainable": 1000, "disk_bytes": 4000,
            "peak_rss": 10**9, "seconds_per_step": 0.5, "train_loss": 1.0, "seconds": 60.0,
            "validation": {"exact_match": val, "field_accuracy": val} if seed == 0 else None,
            "test": {"exact_match": test, "field_accuracy": test},
            "probe": {"perplexity": 10.0 + 100 * lr, "questions": 0.9, "n_questions": 10, "kept": 9}}  # fmt: skip


def test_the_rate_is_chosen_on_validation_and_seeded_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hand-made scores: validation prefers 3e-4 (0.6); test would prefer 3e-3 (0.9). The seeds go where validation
    # says, and the report marks that rate; every other trial is the sweep's, on seed 0.
    validation = {3e-4: 0.6, 1e-3: 0.5, 3e-3: 0.4}
    test = {3e-4: 0.5, 1e-3: 0.6, 3e-3: 0.9}
    ran: list[tuple[str, float, int]] = []

    def fake_trial(trial: compare_trials.Trial, ctx: compare_trials.Context) -> tuple[dict[str, Any], bool]:
        assert trial.spec is not None
        ran.append((trial.spec.label, trial.lr, trial.seed))
        score = test[trial.lr] + 0.01 * trial.seed
        return _fake_record(trial.setup.task, trial.spec, trial.lr, trial.seed, validation[trial.lr], score), False

    def fake_base(setups: list, ctx: compare_trials.Context) -> tuple[list[int], dict[str, Any]]:
        scores = {"exact_match": 0.0, "field_accuracy": 0.0}
        probe = {"perplexity": 10.0, "questions": 1.0, "n_questions": 10, "asked": 20}
        return list(range(10)), {s.task: {"validation": scores, "test": scores, "probe": probe} for s in setups}

    monkeypatch.setattr("lorakit.cli.compare.run_trial", fake_trial)
    monkeypatch.setattr("lorakit.cli.compare.base_trials", fake_base)
    setup = builtin_setup("format", BUDGETS["full"], tmp_path / "splits", None, None)
    report = run_compare([setup], [MethodSpec("lora")], BUDGETS["full"], tmp_path)
    assert ran == [("lora r=16", 3e-4, 0), ("lora r=16", 1e-3, 0), ("lora r=16", 3e-3, 0),
                   ("lora r=16", 3e-4, 1), ("lora r=16", 3e-4, 2)]  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["best"] == {"format": {"lora r=16": 3e-4}}
    text = report.read_text()
    assert "| lora r=16 | 0.0003 (best) | 0.600 | 0.500 |" in text
    assert "| lora r=16 | 0.0003 | 3 | 0.510 ± 0.010 | 0.500, 0.510, 0.520 |" in text
    assert "lowest of its sweep" in text
    for name in ("score_vs_params.png", "learning_vs_forgetting.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert setup.validation.read_text() and not set(setup.validation.read_text().splitlines()) & set(
        setup.test.read_text().splitlines()
    ), "validation and test are disjoint"

    # the documentation page is refreshed from results.json alone: its figures block replaced, its reading kept
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text(f"# Page\n\nclaim\n\n{BEGIN}\nold figures\n{END}\n\n## Reading\n\nby hand\n")
    refresh_docs(tmp_path, page)
    text = page.read_text()
    assert text.startswith("# Page\n\nclaim\n\n" + BEGIN) and text.endswith(END + "\n\n## Reading\n\nby hand\n")
    assert "old figures" not in text and "#### At the best rate (3 seed(s)" in text
    assert "![learning_vs_forgetting.png](compare-run/learning_vs_forgetting.png)" in text
    assert sorted(p.name for p in (page.parent / "compare-run").iterdir()) == sorted(
        ["report.md", "results.json", "score_vs_params.png", "learning_vs_forgetting.png"]
    )
    shipped = Path(__file__).parents[1] / "docs" / "scalpel-vs-sledgehammer.md"
    assert BEGIN in shipped.read_text() and END in shipped.read_text(), "the shipped page can be refreshed"


CHAT = [("Translate to French: cat", "chat"), ("Translate to French: dog", "chien"),
        ("Translate to French: house", "maison"), ("Translate to French: water", "eau"),
        ("Translate to French: bread", "pain"), ("Translate to French: book", "livre"),
        ("Translate to French: tree", "arbre"), ("Translate to French: sun", "soleil"),
        ("Translate to French: moon", "lune"), ("Translate to French: car", "voiture"),
        ("Translate to French: friend", "ami"), ("Translate to French: city", "ville"),
        ("Translate to French: apple", "pomme"), ("Translate to French: milk", "lait"),
        ("Translate to French: school", "école"), ("Translate to French: road", "route"),
        ("Translate to French: sea", "mer"), ("Translate to French: door", "porte"),
        ("Translate to French: night", "nuit"), ("Translate to French: flower", "fleur")]  # fmt: skip
HELD_OUT = [("Translate to French: bird", "oiseau"), ("Translate to French: window", "fenêtre"),
            ("Translate to French: rain", "pluie")]  # fmt: skip


def _chat_file(path: Path, pairs: list[tuple[str, str]]) -> Path:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_compare_on_my_data_resumes_and_reuses_trials(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, held = _chat_file(tmp_path / "mine.jsonl", CHAT), _chat_file(tmp_path / "held.jsonl", HELD_OUT)
    out = tmp_path / "out"
    real = compare_trials.train_one
    trained: list[str] = []
    stop_at: list[int] = [2]

    def observed(trial: compare_trials.Trial, folder: Path, ctx: compare_trials.Context) -> dict[str, Any]:
        if len(trained) + 1 == stop_at[0]:
            raise KeyboardInterrupt  # a Ctrl-C as the second trial starts
        trained.append(trial.describe())
        return real(trial, folder, ctx)

    monkeypatch.setattr(compare_trials, "train_one", observed)
    argv = ["compare", "--data", str(data), "--eval-data", str(held), "--model", str(tiny_model_dir), "--quick",
            "--seeds", "1", "--output", str(out), "--methods"]  # fmt: skip
    both = "lora:r=4:lr=1e-3,full:lr=1e-4"
    assert main([*argv, both]) == 130, "interrupted"
    assert trained == ["data: lora r=4 lr 0.001 seed 0"]
    assert not (out / "report.md").exists()

    stop_at[0] = 0
    trained.clear()
    assert main([*argv, both]) == 0
    assert trained == ["data: full lr 0.0001 seed 0"], "the first trial came from the cache"

    results = json.loads((out / "results.json").read_text())
    assert [(t["label"], t["lr"]) for t in results["trials"]] == [("lora r=4", 1e-3), ("full", 1e-4)]
    task = results["settings"]["tasks"]["data"]
    assert (task["kind"], task["metric"], task["steps"]) == ("generation", "rouge_l", 2)
    assert results["settings"]["budget"]["name"] == "quick"
    test_rows = read_jsonl(out / "splits" / "data-test.jsonl")
    assert [r["messages"][-1]["content"] for r in test_rows] == [a for _, a in HELD_OUT]
    validation = read_jsonl(out / "splits" / "data-validation.jsonl")
    train = read_jsonl(out / "splits" / "data-train.jsonl")
    assert len(validation) == 2, "10% of --data"
    pairs = {(r["messages"][0]["content"], r["messages"][-1]["content"]) for r in validation}
    assert pairs <= set(CHAT) and not pairs & {
        (r["messages"][0]["content"], r["messages"][-1]["content"]) for r in train
    }
    for t in results["trials"]:
        assert 0 <= t["test"]["rouge_l"] <= 1 and t["probe"]["perplexity"] > 0 and t["trainable"] > 0
    assert not list((out / "trials").rglob("model.safetensors")), "full fine-tuning weights are dropped once scored"
    text = (out / "report.md").read_text()
    assert "- budget: quick" in text and "test rouge_l" in text and "### Forgetting at equal task score" in text

    trained.clear()
    assert main([*argv, "lora:r=4:lr=1e-3"]) == 0
    assert trained == [], "another list of methods re-uses the trials it shares"
    assert [t["label"] for t in json.loads((out / "results.json").read_text())["trials"]] == ["lora r=4"]


def test_compare_flags_that_contradict_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--eval-data", "x.jsonl"]) == 2
    assert "--eval-data is the test split of --data" in capsys.readouterr().err
    assert main(["compare", "--data", "x.jsonl", "--task", "format"]) == 2
    assert "--task names a built-in task" in capsys.readouterr().err


@pytest.mark.slow  # 6 `lorakit train` processes on the built-in tasks, ~1 min on 2 cores: the command end to end
def test_quick_compare_on_the_builtin_tasks(tiny_model_dir: Path, tmp_path: Path) -> None:
    budget = BUDGETS["quick"]
    setups = [builtin_setup(t, budget, tmp_path / "splits", None, None) for t in ("format", "knowledge")]
    methods = parse_methods("full:lr=1e-4,lora:r=4")
    report = run_compare(setups, methods, budget, tmp_path, model=str(tiny_model_dir), seeds=1)
    text = report.read_text()
    assert text.startswith("# lorakit compare") and "- machine:" in text and "- command:" in text
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(t["task"], t["label"], t["lr"]) for t in results["trials"]] == [
        ("format", "full", 1e-4), ("format", "lora r=4", 3e-4), ("format", "lora r=4", 1e-3),
        ("knowledge", "full", 1e-4), ("knowledge", "lora r=4", 3e-4), ("knowledge", "lora r=4", 1e-3),
    ]  # fmt: skip
    plans = plan_methods(str(tiny_model_dir), PlanSettings(r=4, target_modules="all-linear"), ("full", "lora"))[2]
    for t in results["trials"]:
        assert t["trainable"] == plans["full" if t["method"] == "full" else "lora"].trainable, (
            "what lorakit plan counts"
        )
        assert t["disk_bytes"] > 0 and t["peak_rss"] > 0 and t["seconds_per_step"] > 0
        assert 0 <= t["test"]["exact_match"] <= 1 and t["probe"]["perplexity"] > 0
    full_bytes = next(t["disk_bytes"] for t in results["trials"] if t["method"] == "full")
    lora_bytes = next(t["disk_bytes"] for t in results["trials"] if t["method"] == "lora")
    assert full_bytes > 50 * lora_bytes


def test_progress_eta_counts_each_methods_own_trial_time() -> None:
    from types import SimpleNamespace

    from lorakit.cli.compare import Progress
    from lorakit.cli.compare.trials import Trial

    setup: Any = SimpleNamespace(task="knowledge", metric="exact_match")
    full: Any = SimpleNamespace(label="full")
    lora: Any = SimpleNamespace(label="lora r=16")
    progress = Progress({("knowledge", "full"): 3, ("knowledge", "lora r=16"): 3})
    record = {"test": {"exact_match": 0.5}, "validation": {}, "probe": {"kept": 1, "n_questions": 2, "perplexity": 9.0}}
    progress.line(Trial(setup, full, 1e-4), {**record, "seconds": 600.0}, False, setup)
    # no LoRA trial yet: the task's mean (600 s) for all 5 left
    assert progress.line(Trial(setup, full, 3e-4), {**record, "seconds": 600.0}, False, setup).endswith(
        "about 40 min left"  # 1 full + 3 LoRA at 600 s
    )
    # 1 full trial left at 600 s and 2 LoRA trials at 120 s: 14 min (the task's mean, 440 s, would say 22 min)
    assert progress.line(Trial(setup, lora, 1e-3), {**record, "seconds": 120.0}, False, setup).endswith(
        "about 14 min left"
    )
