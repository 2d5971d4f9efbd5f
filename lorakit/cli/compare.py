"""Train every method on the same budget and score it: task score, forgetting, size, memory, time.

Each method trains in its own ``python -m lorakit train`` process (same data, order, steps, batch and seed);
``os.wait4`` gives that process's peak RSS. Scoring happens here, with greedy generation on merged weights.

Learning rates: LoRA trains at 1e-3 with lora_alpha = 2r (lorakit's demo setting, tuned on the contacts
task), full fine-tuning at 1e-4. Full fine-tuning moves every weight, so it needs a far smaller step: the
usual full-SFT range for small models is 1e-5 to 1e-4 (the top of it here, as the budget is a few dozen steps),
and Biderman et al. 2024 found the best LoRA rates about 10x the best full fine-tuning rates. The rates were
chosen from those ranges, not swept here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lorakit.cli.common import device_flag, positive, precision_flag
from lorakit.data.jsonl import read_jsonl
from lorakit.errors import LorakitError
from lorakit.files import write_text_atomic
from lorakit.tasks.contacts import builtin_path as contacts_path
from lorakit.tasks.knowledge import builtin_path as knowledge_path
from lorakit.tasks.knowledge import normalise

Task = Literal["format", "knowledge"]
DEFAULT_METHODS = "full,lora:r=8,lora:r=64"
LEARNING_RATES = {"full": 1e-4, "lora": 1e-3}
PROBE_TEXT = Path(__file__).parents[1] / "tasks" / "builtin" / "probe_text.jsonl"
PROBE_QUESTIONS = Path(__file__).parents[1] / "tasks" / "builtin" / "probe_questions.jsonl"


@dataclass(frozen=True)
class MethodSpec:
    """One column of the comparison: ``full`` or ``lora:r=8`` (optionally ``:lr=2e-4``)."""

    method: str
    r: int = 16
    lr: float = 0.0

    @property
    def label(self) -> str:
        return self.method if self.method == "full" else f"{self.method} r={self.r}"

    @property
    def slug(self) -> str:
        return self.method if self.method == "full" else f"{self.method}-r{self.r}"


def parse_methods(text: str) -> list[MethodSpec]:
    """``full,lora:r=8,lora:r=64:lr=5e-4`` -> specs; an unknown method or key is a one-line error."""
    from lorakit.train.config import TrainConfig

    specs = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        method, *options = item.split(":")
        try:
            TrainConfig(method=method)  # type: ignore[arg-type]
        except ValueError:
            raise LorakitError(f"--methods: {method!r} is not a training method of this lorakit") from None
        values: dict[str, Any] = {"r": 16, "lr": LEARNING_RATES.get(method, 1e-3)}
        for option in options:
            key, _, value = option.partition("=")
            if key not in ("r", "lr") or not value:
                raise LorakitError(f"--methods: {item!r}: options are r=N and lr=X, got {option!r}")
            try:
                values[key] = int(value) if key == "r" else float(value)
            except ValueError:
                raise LorakitError(f"--methods: {item!r}: {key} must be a number, got {value!r}") from None
        specs.append(MethodSpec(method, values["r"], values["lr"]))
    if not specs:
        raise LorakitError("--methods: name at least one method, e.g. full,lora:r=8")
    return specs


@dataclass(frozen=True)
class TaskSetup:
    """The shared budget of one task: data, steps, batch, and how many test items are scored."""

    task: Task
    data: str
    steps: int
    batch_size: int
    n_test: int | None
    n_train: int | None = None


def task_setup(task: Task, steps: int | None, quick: bool, limit: int | None = None) -> TaskSetup:
    """The task's default budget (``--quick``: tiny); ``steps`` and ``limit`` (items scored) override it."""
    if limit is not None:
        return dataclasses.replace(task_setup(task, steps, quick), n_test=limit)
    if task == "format":
        return TaskSetup(task, str(contacts_path("train")), steps or (2 if quick else 60), 8 if not quick else 2,
                         8 if quick else 30, 16 if quick else None)  # fmt: skip
    return TaskSetup(task, str(knowledge_path("train")), steps or (2 if quick else 120), 16 if not quick else 2,
                     10 if quick else None, 16 if quick else None)  # fmt: skip


@dataclass
class Result:
    """One trained (or base) model's measurements."""

    task: str
    label: str
    method: str
    r: int
    lr: float
    trainable: int = 0
    disk_bytes: int = 0
    peak_rss: int = 0
    seconds_per_step: float = 0.0
    train_loss: float = 0.0
    score: dict[str, float] = field(default_factory=dict)
    probe: dict[str, float] = field(default_factory=dict)


def _subset(data: str, n: int | None, folder: Path) -> str:
    if n is None:
        return data
    path = folder / f"subset-{Path(data).name}"
    lines = Path(data).read_text(encoding="utf-8").splitlines()[:n]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return str(path)


def train_one(spec: MethodSpec, setup: TaskSetup, model: str | None, output: Path, device: str = "auto",
              precision: str = "auto") -> Result:  # fmt: skip
    """One ``lorakit train`` subprocess (on ``device``, in ``precision``); returns what it measured."""
    output.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "lorakit", "train", "--data", _subset(setup.data, setup.n_train, output.parent),
            "--output", str(output), "--overwrite", "--method", spec.method, "--max-steps", str(setup.steps),
            "--batch-size", str(setup.batch_size), "--lr", str(spec.lr), "--seed", "0",
            "--warmup-steps", str(max(1, setup.steps // 10)), "--seq-len", "384", "--device", device,
            "--precision", precision]  # fmt: skip
    if spec.method != "full":
        args += ["--r", str(spec.r), "--lora-alpha", str(2 * spec.r)]
    if model:
        args += ["--model", model]
    with open(output / "train.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (output / "train.log").read_text(encoding="utf-8").strip().splitlines()[-1:]
        raise LorakitError(f"training {spec.label} on {setup.task} failed: {' '.join(tail)} (see {output}/train.log)")
    summary = json.loads((output / "train_summary.json").read_text(encoding="utf-8"))
    steps = [r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    seconds = sorted(r["seconds"] for r in steps)
    weights = ("model.safetensors",) if spec.method == "full" else ("adapter_model.safetensors",)
    return Result(
        setup.task, spec.label, spec.method, spec.r, spec.lr, trainable=summary["trainable"],
        disk_bytes=sum((output / w).stat().st_size for w in weights), peak_rss=usage.ru_maxrss * 1024,
        seconds_per_step=seconds[len(seconds) // 2], train_loss=summary["final"]["train_loss"],
    )  # fmt: skip


def load_trained(model: str | None, spec: MethodSpec | None, folder: Path | None, device: str = "auto",
                 precision: str = "auto") -> tuple[Any, Any]:  # fmt: skip
    """The base model, the base plus a trained adapter, or a fully fine-tuned model; ready for inference on
    ``device`` in ``precision``."""
    from lorakit.cli.common import model_with_adapter

    if spec is not None and spec.method == "full" and folder is not None:
        return model_with_adapter(str(folder), None, None, False, device, precision)
    adapter = str(folder) if spec is not None and folder is not None else None
    return model_with_adapter(model, adapter, "none", False, device, precision)


def score_task(m: Any, tokenizer: Any, setup: TaskSetup) -> dict[str, float]:
    """Format: contacts exact match and field accuracy. Knowledge: exact answer match on paraphrases."""
    from lorakit.eval.generate import generate_all
    from lorakit.eval.run import evaluate_contacts

    if setup.task == "format":
        metrics = evaluate_contacts(m, tokenizer, None, setup.n_test, batch_size=32, progress=False)
        return {"exact_match": metrics["exact_match"], "field_accuracy": metrics["field_accuracy"]}
    records = read_jsonl(knowledge_path("test"))[: setup.n_test]
    replies = generate_all(m, tokenizer, [r["messages"] for r in records], 16, batch_size=64, progress=False)
    answers = [r["messages"][-1]["content"] for r in records]
    exact = [normalise(reply) == normalise(a) for reply, a in zip(replies, answers, strict=True)]
    return {"exact_match": sum(exact) / len(exact)}


def probe(m: Any, tokenizer: Any, keep: list[int] | None) -> tuple[dict[str, float], list[int]]:
    """General-ability probe: perplexity on ordinary text, and short general questions (answer contained in
    the reply). ``keep``: the questions the base answered right (None: this is the base, find them)."""
    from lorakit.eval.generate import generate_all
    from lorakit.eval.run import evaluate_loss

    ppl = evaluate_loss(m, tokenizer, str(PROBE_TEXT))["perplexity"]
    records = read_jsonl(PROBE_QUESTIONS)
    replies = generate_all(m, tokenizer, [r["messages"] for r in records], 24, batch_size=64, progress=False)
    right = [i for i, (r, reply) in enumerate(zip(records, replies, strict=True))
             if r["messages"][-1]["content"].casefold() in reply.casefold()]  # fmt: skip
    chosen = keep if keep is not None else right
    accuracy = len(set(right) & set(chosen)) / len(chosen) if chosen else 1.0  # none to lose: nothing lost
    return {"perplexity": ppl, "questions": accuracy, "n_questions": len(chosen)}, right


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def run_compare(tasks: list[Task], methods: list[MethodSpec], steps: int | None, quick: bool, output: Path,
                model: str | None = None, command: str = "lorakit compare",
                limit: int | None = None, device: str = "auto", precision: str = "auto") -> Path:  # fmt: skip
    """Train and score every method on every task; writes results.json, report.md and plots into ``output``."""
    from lorakit.cli.compare_report import write_report

    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"lorakit compare: base model probe ({'quick' if quick else 'default'} run)", flush=True)
    base_model, tokenizer = load_trained(model, None, None, device, precision)
    base_probe, keep = probe(base_model, tokenizer, None)
    results: list[Result] = []
    setups = [task_setup(t, steps, quick, limit) for t in tasks]
    for setup in setups:
        base = Result(setup.task, "base", "base", 0, 0.0, score=score_task(base_model, tokenizer, setup))
        base.probe = {**base_probe, "questions": 1.0, "n_questions": len(keep)}
        results.append(base)
    del base_model
    for setup in setups:
        for spec in methods:
            folder = output / setup.task / spec.slug
            print(f"lorakit compare: {setup.task}: training {spec.label} ({setup.steps} steps)", flush=True)
            result = train_one(spec, setup, model, folder, device, precision)
            trained, tokenizer = load_trained(model, spec, folder, device, precision)
            result.score = score_task(trained, tokenizer, setup)
            result.probe = probe(trained, tokenizer, keep)[0]
            print(f"lorakit compare: {setup.task}: {spec.label}: {result.score}, probe {result.probe}", flush=True)
            results.append(result)
            write_text_atomic(output / "results.json", json.dumps([r.__dict__ for r in results], indent=2) + "\n")
    settings = {
        "tasks": {s.task: {"steps": s.steps, "batch_size": s.batch_size, "n_test": s.n_test, "n_train": s.n_train,
                           "data": Path(s.data).name} for s in setups},
        "methods": [{"label": m.label, "lr": m.lr, **({"lora_alpha": 2 * m.r} if m.method != "full" else {})}
                    for m in methods],
        "model": model or "smollm2-135m-instruct (built-in)", "seed": 0, "quick": quick,
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }  # fmt: skip
    return write_report(output, results, settings, machine(), command)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="LoRA vs full fine-tuning: task score, forgetting, size, memory, time")
    p.add_argument("--task", choices=["format", "knowledge", "both"], default="both",
                   help="format: the contacts task; knowledge: new facts; both")  # fmt: skip
    p.add_argument("--methods", default=DEFAULT_METHODS, help="comma list: full, lora:r=N[:lr=X]")
    p.add_argument("--steps", type=positive, help="optimiser steps per method (default: per task)")
    p.add_argument("--quick", action="store_true", help="a few steps on tiny subsets (for tests)")
    p.add_argument("--limit", type=positive, help="score only the first N test items of each task")
    p.add_argument("--output", help="folder for report.md, plots and runs (default runs/compare)")
    p.add_argument("--model", help="base model (default: the built-in SmolLM2-135M-Instruct)")
    device_flag(p)
    precision_flag(p, "training and scoring")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    import shlex

    tasks: list[Task] = ["knowledge", "format"] if args.task == "both" else [args.task]
    output = Path(args.output or ("runs/compare-quick" if args.quick else "runs/compare"))
    command = "lorakit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "lorakit compare"
    report = run_compare(tasks, parse_methods(args.methods), args.steps, args.quick, output, args.model, command,
                         args.limit, args.device, args.precision)  # fmt: skip
    print(f"report and plots in {report.parent}/ ({report.name})")
    return 0
