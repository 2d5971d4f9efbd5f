"""``lorakit compare``: LoRA against full fine-tuning, each at its best learning rate, on several seeds, with
forgetting compared at equal task score; on the built-in tasks or on the user's own data.

For each task, every method is first trained at each rate of its sweep (seed 0) and scored on a validation split
and on the test split; the rate with the best validation score is then trained on more seeds, and the report
quotes test scores only (``.setup`` has the methods, grids and budgets, ``.trials`` one
trial and its cache, ``.analysis`` the arithmetic, ``.report`` the report). Every trial is cached in
the output folder: the same command continues an interrupted comparison, and adding a method re-uses the rest.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from lorakit.cli.common import device_flag, positive, precision_flag
from lorakit.cli.compare.analysis import best_rate
from lorakit.cli.compare.setup import (
    BUDGETS,
    DEFAULT_METHODS,
    GRID_BUILTIN,
    GRID_OTHER,
    Budget,
    MethodSpec,
    TaskSetup,
    builtin_setup,
    data_setup,
    parse_methods,
)
from lorakit.cli.compare.trials import Context, Trial, base_trials, run_trial
from lorakit.data.formats import FORMATS
from lorakit.errors import LorakitError


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def minutes(seconds: float) -> str:
    return f"{seconds / 3600:.0f} h {seconds % 3600 / 60:02.0f} min" if seconds >= 3600 else f"{seconds / 60:.0f} min"


class Progress:
    """One line per trial, with how long the rest should take: each method's trials left on a task times the mean
    time of that method's trials there so far (full fine-tuning's take ~3x LoRA's), else of the task's, else of all.
    """

    def __init__(self, planned: dict[tuple[str, str], int]) -> None:
        self.left = dict(planned)  # (task, method label) -> trials still to run
        self.total, self.done = sum(planned.values()), 0
        self.seconds: dict[tuple[str, str], list[float]] = {}

    def line(self, trial: Trial, record: dict[str, Any], was_cached: bool, setup: TaskSetup) -> str:
        task = setup.task
        key = (task, trial.spec.label if trial.spec is not None else "base")
        self.done += 1
        self.left[key] -= 1
        self.seconds.setdefault(key, []).append(record["seconds"])
        eta = sum(n * self._expected(k) for k, n in self.left.items())
        val = record["validation"]
        probe = record["probe"]
        text = f"lorakit compare: [{self.done}/{self.total}] {trial.describe()}: test {setup.metric} "
        text += f"{record['test'][setup.metric]:.3f}"
        text += f" (validation {val[setup.metric]:.3f})" if val else ""
        text += f", probe questions kept {probe['kept']}/{probe['n_questions']}, ppl {probe['perplexity']:.2f}"
        text += "; cached" if was_cached else f"; {record['seconds'] / 60:.1f} min"
        return text + (f"; about {minutes(eta)} left" if self.done < self.total else "")

    def _expected(self, key: tuple[str, str]) -> float:
        """Seconds one more trial of ``key`` should take."""
        same_task = [s for (task, _), times in self.seconds.items() if task == key[0] for s in times]
        every = [s for times in self.seconds.values() for s in times]
        return _mean(self.seconds.get(key) or same_task or every)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def run_compare(setups: list[TaskSetup], methods: list[MethodSpec], budget: Budget, output: Path,
                model: str | None = None, command: str = "lorakit compare", device: str = "auto",
                precision: str = "auto", seeds: int | None = None, keep_weights: bool = False) -> Path:  # fmt: skip
    """Sweep, select and seed every method on every task; writes results.json, report.md and plots into
    ``output`` and returns the report's path."""
    from lorakit.cli.compare.report import write_report

    started = time.perf_counter()
    n_seeds = seeds or budget.seeds
    grid = GRID_BUILTIN if model is None else GRID_OTHER
    rates = {spec.label: spec.rates(grid, budget.rates) for spec in methods}
    planned = {(s.task, label): len(r) + n_seeds - 1 for s in setups for label, r in rates.items()}
    described = budget.describe(n_seeds, tuple(len(r) for r in rates.values() if len(r) > 1))
    print(f"lorakit compare: {sum(planned.values())} trials, budget {described}; in {output}", flush=True)
    ctx = Context(output, model, device, precision, keep_weights)
    keep, base = base_trials(setups, ctx)
    ctx = Context(output, model, device, precision, keep_weights, keep)
    progress = Progress(planned)
    trials: list[dict[str, Any]] = []
    best: dict[str, dict[str, float]] = {}

    def run(trial: Trial) -> dict[str, Any]:
        record, was_cached = run_trial(trial, ctx)
        print(progress.line(trial, record, was_cached, trial.setup), flush=True)
        trials.append(record)
        return record

    for setup in setups:
        sweeps = {spec.label: {lr: run(Trial(setup, spec, lr, 0)) for lr in rates[spec.label]} for spec in methods}
        best[setup.task] = {}
        for spec in methods:
            sweep = sweeps[spec.label]
            validation = {lr: r["validation"][setup.metric] for lr, r in sweep.items()}
            chosen = best_rate(validation, setup.higher_is_better)
            best[setup.task][spec.label] = chosen
            for seed in range(1, n_seeds):
                run(Trial(setup, spec, chosen, seed))
    settings = {
        "budget": {"name": budget.name, "describe": described, "seeds": n_seeds},
        "model": model or "smollm2-135m-instruct (built-in)",
        "methods": [{"label": m.label, "method": m.method, "rates": list(rates[m.label]),
                     "swept": len(rates[m.label]) > 1,
                     **({"r": m.r, "targets": m.targets, "lora_alpha": m.lora_alpha} if m.method != "full" else {})}
                    for m in methods],
        "tasks": {s.task: {"title": s.title, "kind": s.kind, "metric": s.metric, "higher_is_better": s.higher_is_better,
                           "steps": s.steps, "batch_size": s.batch_size, "seq_len": s.seq_len, "about": s.about}
                  for s in setups},
        "minutes_this_run": round((time.perf_counter() - started) / 60, 1),
    }  # fmt: skip
    payload = {"settings": settings, "machine": machine(), "command": command, "base": base, "best": best,
               "trials": trials}  # fmt: skip
    return write_report(output, payload)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="LoRA vs full fine-tuning: rates swept, seeds, forgetting at equal score")
    p.add_argument(
        "--task",
        choices=["format", "knowledge", "both"],
        help="the built-in tasks: format (contacts JSON), knowledge (new facts) or both (the default)",
    )
    p.add_argument(
        "--data",
        help="your own training data (any format lorakit train reads) instead of the built-in "
        "tasks; validation (and without --eval-data, test) records are drawn from it",
    )
    p.add_argument("--eval-data", help="with --data: held-out records the report's test scores come from")
    p.add_argument("--data-format", choices=("auto", *FORMATS), default="auto",
                   help="record format of --data and --eval-data; auto: read from the first record's keys")  # fmt: skip
    p.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma list of full, lora:r=N[:targets=a+b][:alpha=N][:lr=X or X+Y+Z] (no lr: swept)",
    )
    p.add_argument(
        "--budget",
        choices=["small", "full"],
        default="small",
        help="small: the sweep at half the steps, one seed; full: the sweep, then 3 seeds at the best rate",
    )
    p.add_argument("--quick", action="store_true", help="2 steps on tiny subsets, 2 rates, 2 seeds (for tests)")
    p.add_argument("--seeds", type=positive, help="seeds at each method's best rate (default: the budget's)")
    p.add_argument("--steps", type=positive, help="optimiser steps per trial (default: the budget's, per task)")
    p.add_argument("--limit", type=positive, help="score only the first N test items of each task")
    p.add_argument("--output", help="folder for the report, plots and cached trials (default runs/compare-BUDGET)")
    p.add_argument("--model", help="base model (default: the built-in SmolLM2-135M-Instruct)")
    p.add_argument(
        "--keep-weights",
        action="store_true",
        help="keep each full fine-tuning trial's model (0.5 GB for the built-in model; adapters are always kept)",
    )
    device_flag(p)
    precision_flag(p, "training and scoring")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    import shlex

    from lorakit.cli.common import offline_unless_hub_reachable

    budget = BUDGETS["quick" if args.quick else args.budget]
    output = Path(args.output or f"runs/compare-{budget.name}")
    methods = parse_methods(args.methods)
    if args.eval_data and not args.data:
        raise LorakitError("--eval-data is the test split of --data: give --data too")
    if args.data and args.task:
        raise LorakitError("--task names a built-in task; with --data the task is your data's")
    splits = output / "splits"
    if args.data:
        offline_unless_hub_reachable(args.data, args.eval_data)
        setups = [data_setup(args.data, args.eval_data, args.data_format, budget, splits, args.steps, args.limit)]
    else:
        tasks = ["knowledge", "format"] if args.task in (None, "both") else [args.task]
        setups = [builtin_setup(t, budget, splits, args.steps, args.limit) for t in tasks]
    command = "lorakit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "lorakit compare"
    try:
        report = run_compare(setups, methods, budget, output, args.model, command, args.device, args.precision,
                             args.seeds, args.keep_weights)  # fmt: skip
    except KeyboardInterrupt:
        print(
            f"lorakit compare: stopped; the same command continues from the trials kept in {output}/trials",
            file=sys.stderr,
        )
        raise
    print(f"report and plots in {report.parent}/ ({report.name})")
    return 0
