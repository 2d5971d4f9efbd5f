"""One trial of ``lorakit compare``: train a method at one rate and seed, score it, and cache what it measured.

Each trial trains in its own ``python -m lorakit train`` process (whose metrics give its own peak RSS), then is
scored here (greedy generation on merged weights). A finished trial is a folder under
``OUTPUT/trials/TASK/METHOD/`` whose ``trial.json`` holds its settings and scores, written atomically last: a folder
without it is an interrupted trial, trained again; a folder with it is never trained again. The folder's name
ends in a hash of every setting that decides the result (data files, probe files, steps, batch, method, rate,
seed, model, precision), so a comparison with other settings in the same output folder trains its own trials and
one that adds a method re-uses the others. A full fine-tuning trial's weights (0.5 GB for the built-in model) are
deleted once scored unless ``keep_weights``; adapters are kept.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.cli.compare.score import PROBE_QUESTIONS, PROBE_TEXT, load_model_for_scoring, probe, score
from lorakit.cli.compare.setup import MethodSpec, TaskSetup
from lorakit.errors import LorakitError
from lorakit.files import write_text_atomic
from lorakit.runs.folder import RunFolder

TRIAL_FILE = "trial.json"
SCORING = 2  # bump when scoring changes: every cached trial is then scored (and trained) again


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Context:
    """What every trial of one comparison shares."""

    output: Path
    model: str | None
    device: str = "auto"
    precision: str = "auto"
    keep_weights: bool = False
    keep: list[int] = field(default_factory=list)
    """The probe questions the base model answers."""


@dataclass(frozen=True)
class Trial:
    """A method trained on a task at one rate and seed (``spec`` None: the base model, untrained)."""

    setup: TaskSetup
    spec: MethodSpec | None
    lr: float = 0.0
    seed: int = 0

    def config(self, ctx: Context) -> dict[str, Any]:
        """Every setting that decides this trial's result."""
        s = self.setup
        config: dict[str, Any] = {
            "task": s.task, "kind": s.kind, "model": ctx.model or "built-in", "precision": ctx.precision,
            "device": ctx.device, "scoring": SCORING,
            "files": {"train": file_hash(s.train), "validation": file_hash(s.validation), "test": file_hash(s.test),
                      "probe": file_hash(PROBE_TEXT) + file_hash(PROBE_QUESTIONS)},
        }  # fmt: skip
        if self.spec is None:
            return config
        config.update(steps=s.steps, batch_size=s.batch_size, seq_len=s.seq_len, warmup_steps=self.warmup_steps,
                      method=self.spec.method, lr=self.lr, seed=self.seed)  # fmt: skip
        if self.spec.method != "full":
            config.update(r=self.spec.r, target_modules=self.spec.targets, lora_alpha=self.spec.lora_alpha)
        return config

    @property
    def warmup_steps(self) -> int:
        return max(1, self.setup.steps // 10)

    def folder(self, ctx: Context) -> Path:
        digest = hashlib.sha256(json.dumps(self.config(ctx), sort_keys=True).encode()).hexdigest()[:10]
        if self.spec is None:
            return ctx.output / "trials" / self.setup.task / f"base-{digest}"
        return ctx.output / "trials" / self.setup.task / self.spec.slug / f"lr{self.lr:g}-seed{self.seed}-{digest}"

    def describe(self) -> str:
        if self.spec is None:
            return f"{self.setup.task}: base model"
        return f"{self.setup.task}: {self.spec.label} lr {self.lr:g} seed {self.seed}"


def cached(trial: Trial, ctx: Context) -> dict[str, Any] | None:
    """The finished trial's record, if there is one."""
    path = trial.folder(ctx) / TRIAL_FILE
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return record if record.get("config") == trial.config(ctx) else None


def train_one(trial: Trial, folder: Path, ctx: Context) -> dict[str, Any]:
    """One ``lorakit train`` subprocess; returns what it measured (size, peak RSS, time per step, loss)."""
    spec, setup = trial.spec, trial.setup
    assert spec is not None
    folder.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "lorakit", "train", "--data", str(setup.train), "--output", str(folder),
            "--overwrite", "--method", spec.method, "--max-steps", str(setup.steps), "--batch-size",
            str(setup.batch_size), "--lr", str(trial.lr), "--seed", str(trial.seed), "--warmup-steps",
            str(trial.warmup_steps), "--seq-len", str(setup.seq_len), "--device", ctx.device, "--precision",
            ctx.precision]  # fmt: skip
    if spec.method != "full":
        args += ["--target-modules", spec.targets, "--lora-alpha", f"{spec.lora_alpha:g}"]
        args += ["--r", str(spec.r)] if spec.method != "ia3" else []
    if ctx.model:
        args += ["--model", ctx.model]
    with open(folder / "train.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait()
        except BaseException:  # interrupted: the trial is left unfinished, and trained again next time
            proc.kill()
            proc.wait()
            raise
    if code != 0:
        tail = (folder / "train.log").read_text(encoding="utf-8").strip().splitlines()[-1:]
        raise LorakitError(f"training {trial.describe()} failed: {' '.join(tail)} (see {folder}/train.log)")
    run = RunFolder(folder)
    summary, rows = run.read_summary(), run.read_metrics()
    if not summary:
        raise LorakitError(f"training {trial.describe()} left no summary in {folder} (see {folder}/train.log)")
    seconds = sorted(r["seconds"] for r in rows if r["kind"] == "train")
    weights = "model.safetensors" if spec.method == "full" else "adapter_model.safetensors"
    return {
        "trainable": summary["trainable"],
        "disk_bytes": (folder / weights).stat().st_size,
        # the trainer's own peak: wait4's ru_maxrss would start from this (scoring, 4-5 GB) process's peak
        "peak_rss": max(r.get("peak_rss_mb") or 0.0 for r in rows) * (1 << 20),
        "seconds_per_step": seconds[len(seconds) // 2],
        "train_loss": summary["final"]["train_loss"],
    }


def run_trial(trial: Trial, ctx: Context) -> tuple[dict[str, Any], bool]:
    """(the trial's record, whether it was cached): trained and scored unless a finished one is in its folder."""
    record = cached(trial, ctx)
    if record is not None:
        return record, True
    assert trial.spec is not None, "the base model is scored by base_trials"
    started = time.perf_counter()
    folder = trial.folder(ctx)
    (folder / TRIAL_FILE).unlink(missing_ok=True)
    measured = train_one(trial, folder, ctx)
    full = trial.spec.method == "full"
    model, tokenizer = load_model_for_scoring(ctx.model, folder, full, ctx.device, ctx.precision)
    setup = trial.setup
    scores = {
        "validation": score(model, tokenizer, setup.kind, setup.validation) if trial.seed == 0 else None,
        "test": score(model, tokenizer, setup.kind, setup.test),
    }
    forgetting = probe(model, tokenizer, ctx.keep)[0]
    del model
    if full and not ctx.keep_weights:
        for weights in folder.glob("*.safetensors"):
            weights.unlink()
    record = {
        "task": setup.task, "label": trial.spec.label, "method": trial.spec.method, "r": trial.spec.r,
        "targets": trial.spec.targets, "lora_alpha": trial.spec.lora_alpha, "lr": trial.lr, "seed": trial.seed,
        **measured, **scores, "probe": forgetting,
        "seconds": round(time.perf_counter() - started, 1),
        "folder": str(folder.relative_to(ctx.output)), "config": trial.config(ctx),
    }  # fmt: skip
    write_text_atomic(folder / TRIAL_FILE, json.dumps(record, indent=2) + "\n")
    return record, False


def base_trials(setups: list[TaskSetup], ctx: Context) -> tuple[list[int], dict[str, dict[str, Any]]]:
    """(the probe questions the base model answers, each task's base record), the base model loaded only when
    something is not cached yet."""
    base = {s.task: Trial(s, None) for s in setups}
    records = {task: cached(t, ctx) for task, t in base.items()}
    if all(r is not None for r in records.values()):
        first = next(iter(records.values()))
        assert first is not None
        return first["right"], {task: r for task, r in records.items() if r is not None}
    print("lorakit compare: scoring the base model", flush=True)
    model, tokenizer = load_model_for_scoring(ctx.model, None, False, ctx.device, ctx.precision)
    base_probe, right = probe(model, tokenizer, None)
    done: dict[str, dict[str, Any]] = {}
    for task, trial in base.items():
        record = records[task]
        if record is None:
            setup = trial.setup
            record = {
                "task": task, "label": "base", "method": "base",
                "validation": score(model, tokenizer, setup.kind, setup.validation),
                "test": score(model, tokenizer, setup.kind, setup.test), "probe": base_probe, "right": right,
                "config": trial.config(ctx),
            }  # fmt: skip
            folder = trial.folder(ctx)
            folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(folder / TRIAL_FILE, json.dumps(record, indent=2) + "\n")
        done[task] = record
    return right, done
