"""What ``lorakit compare`` trains and on what: methods (``--methods``), learning-rate grids, budgets, task splits.

Learning rates are swept, not chosen. Each method trains at three log-spaced rates (x3 apart) on seed 0; the rate
with the best score on a validation split (disjoint from the test split the report quotes) is then trained on more
seeds. The grids are centred where the papers put each method, and the report says when the best rate sits at an
edge of its grid (a better one may lie beyond it):

- LoRA's best rate is about 10x full fine-tuning's: Biderman et al. 2024 ("LoRA Learns Less and Forgets Less",
  Llama-2-7B) and Schulman et al. / Thinking Machines Lab 2025 ("LoRA Without Regret") both found it. The adapter
  starts at B = 0 and its update B A is scaled by alpha / r, so a step at the same rate moves the weights far less
  than a full fine-tuning step. So the full grid is the LoRA grid divided by 10.
- The built-in 135M model takes large rates (small models do): its demo trains LoRA at 1e-3, the centre of the
  LoRA grid here (3e-4, 1e-3, 3e-3); full fine-tuning sweeps 3e-5, 1e-4, 3e-4. Any other model sweeps around
  ``lorakit train``'s defaults for a user's data (LoRA 2e-4, full 2e-5, the QLoRA paper's and TRL's rates): LoRA
  1e-4, 3e-4, 1e-3 and full 1e-5, 3e-5, 1e-4. IA3's vectors start at 1 and take larger steps (1e-3 to 1e-2).
- lora_alpha is 32 for every rank, as in "LoRA Without Regret": with the alpha / r scaling the best rate is then
  nearly the same at every rank, so one grid serves r=16 and r=64 alike.

``--methods`` is a comma list of methods, each ``name[:option=value]...``: ``r=N`` (rank), ``targets=a+b`` (the
modules to adapt, joined by ``+`` since commas separate methods; ``all-linear``, the default, adapts every linear
layer but the output head), ``alpha=N`` and ``lr=X`` (that rate only, not swept) or ``lr=X+Y+Z`` (a sweep of
those rates).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lorakit.data.jsonl import read_jsonl
from lorakit.errors import LorakitError
from lorakit.files import write_jsonl
from lorakit.tasks.contacts import builtin_path as contacts_path
from lorakit.tasks.knowledge import builtin_path as knowledge_path

ALL_LINEAR = "all-linear"
ATTENTION = "q_proj+k_proj+v_proj+o_proj"
# full fine-tuning; LoRA on attention only; LoRA on every linear layer at two ranks ("LoRA Without Regret": LoRA on
# all layers, the MLP included, matches full fine-tuning on small SFT sets, attention-only LoRA falls short)
DEFAULT_METHODS = f"full,lora:r=16:targets={ATTENTION},lora:r=16,lora:r=64"
LORA_ALPHA = 32.0
RANKED = ("lora", "dora", "qlora")
# the grids: the built-in 135M model's, and any other model's (see the module docstring)
GRID_BUILTIN: dict[str, tuple[float, ...]] = {
    "full": (3e-5, 1e-4, 3e-4), "lora": (3e-4, 1e-3, 3e-3), "dora": (3e-4, 1e-3, 3e-3), "qlora": (3e-4, 1e-3, 3e-3),
    "ia3": (1e-3, 3e-3, 1e-2),
}  # fmt: skip
GRID_OTHER: dict[str, tuple[float, ...]] = {
    "full": (1e-5, 3e-5, 1e-4), "lora": (1e-4, 3e-4, 1e-3), "dora": (1e-4, 3e-4, 1e-3), "qlora": (1e-4, 3e-4, 1e-3),
    "ia3": (1e-3, 3e-3, 1e-2),
}  # fmt: skip
OPTIONS_HELP = "options are r=N, targets=a+b, alpha=N, lr=X (that rate only) or lr=X+Y+Z (a sweep)"


@dataclass(frozen=True)
class MethodSpec:
    """One method of the comparison: ``full``, ``lora:r=16``, ``lora:r=16:targets=q_proj+v_proj:lr=1e-3``."""

    method: str
    r: int = 16
    targets: str = ALL_LINEAR
    """``--target-modules`` as ``lorakit train`` takes it: all-linear or a comma list."""
    lrs: tuple[float, ...] = ()
    """The rates to train at: () sweeps the grid; one rate is trained alone, on every seed."""
    lora_alpha: float = LORA_ALPHA

    @property
    def label(self) -> str:
        """``lora r=16 (q,k,v,o)``: the name in the report."""
        text = self.method + (f" r={self.r}" if self.method in RANKED else "")
        if self.method != "full" and self.targets != ALL_LINEAR:
            text += " (" + ",".join(t.removesuffix("_proj") for t in self.targets.split(",")) + ")"
        if self.method in RANKED and self.lora_alpha != LORA_ALPHA:
            text += f" alpha={self.lora_alpha:g}"
        return text

    @property
    def slug(self) -> str:
        """``lora-r16-q+k+v+o``: the label as a folder name."""
        text = self.label.replace(" r=", "-r").replace(" alpha=", "-alpha").replace(" (", "-").replace(")", "")
        return text.replace(",", "+").replace(" ", "-")

    def rates(self, grid: dict[str, tuple[float, ...]], count: int) -> tuple[float, ...]:
        """The rates this method trains at: its own, or the top ``count`` of its grid."""
        return self.lrs or grid[self.method][len(grid[self.method]) - count :]


def parse_methods(text: str) -> list[MethodSpec]:
    """``full,lora:r=8:targets=q_proj+v_proj,lora:r=64:lr=5e-4`` -> specs; a mistake is a one-line error."""
    from lorakit.train.config import TrainConfig

    specs: list[MethodSpec] = []
    after_targets = False
    for item in (t.strip() for t in text.split(",") if t.strip()):
        method, *options = item.split(":")
        try:
            TrainConfig(method=method)  # type: ignore[arg-type]
        except ValueError:
            hint = (
                "; join target modules with '+' (commas separate methods): lora:r=16:targets=q_proj+v_proj"
                if after_targets
                else ""
            )
            raise LorakitError(f"--methods: {method!r} is not a training method of this lorakit{hint}") from None
        values: dict[str, object] = {}
        for option in options:
            key, _, value = option.partition("=")
            if key not in ("r", "lr", "targets", "alpha") or not value:
                raise LorakitError(f"--methods: {item!r}: {OPTIONS_HELP}, got {option!r}")
            if method == "full" and key != "lr":
                raise LorakitError(f"--methods: {item!r}: full fine-tuning trains every weight; {key}= is for adapters")
            if key == "r" and method not in RANKED:
                raise LorakitError(f"--methods: {item!r}: {method} has no rank")
            values[{"lr": "lrs", "alpha": "lora_alpha"}.get(key, key)] = _option(item, key, value)
        after_targets = "targets" in values
        spec = MethodSpec(method, **values)  # type: ignore[arg-type]
        if any(s.label == spec.label for s in specs):
            raise LorakitError(f"--methods: {spec.label} is named twice; give its rates as one sweep: lr=X+Y+Z")
        specs.append(spec)
    if not specs:
        raise LorakitError("--methods: name at least one method, e.g. full,lora:r=16")
    return specs


def _option(item: str, key: str, value: str) -> object:
    try:
        if key == "r":
            r = int(value)
            if r <= 0:
                raise ValueError
            return r
        if key == "alpha":
            alpha = float(value)
            if not alpha > 0:
                raise ValueError
            return alpha
        if key == "lr":
            lrs = tuple(float(v) for v in value.split("+"))
            if not all(lr > 0 for lr in lrs) or len(set(lrs)) != len(lrs):
                raise ValueError
            return tuple(sorted(lrs))
    except ValueError:
        what = "a positive integer" if key == "r" else "positive numbers joined by +" if key == "lr" else "> 0"
        raise LorakitError(f"--methods: {item!r}: {key} must be {what}, got {value!r}") from None
    names = [t for t in value.split("+") if t]
    if value != ALL_LINEAR and not all(n.replace("_", "").replace(".", "").isalnum() for n in names):
        raise LorakitError(f"--methods: {item!r}: targets are module names joined by '+', or all-linear")
    return value if value == ALL_LINEAR else ",".join(names)


@dataclass(frozen=True)
class Budget:
    """How much a comparison trains: steps per trial, rates swept, seeds at the best rate."""

    name: Literal["quick", "small", "full"]
    step_share: float
    """Share of each task's full steps (knowledge 120, format 60, 3 epochs of a user's data); 0: 2 steps."""
    seeds: int
    rates: int
    """How many rates of each method's grid are swept (its top ones)."""

    def describe(self, seeds: int | None = None, swept: tuple[int, ...] = ()) -> str:
        """``swept``: how many rates each swept method trains at, where ``--methods`` gives some their own."""
        steps = "2 steps on tiny subsets" if not self.step_share else f"{self.step_share:.0%} of the full steps"
        seeds = seeds or self.seeds
        counts = sorted(set(swept) or {self.rates})
        rates = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        return f"{self.name} ({steps}, {rates} rates swept per method, {seeds} seed(s) at the best rate)"


BUDGETS = {
    "quick": Budget("quick", 0.0, 2, 2),  # tests
    "small": Budget("small", 0.5, 1, 3),  # the sweep at half the steps, no spread: ~45 min here
    "full": Budget("full", 1.0, 3, 3),  # the sweep, then 3 seeds at the best rate: ~1 h 50 min here
}

Kind = Literal["contacts", "knowledge", "generation", "loss"]
TITLES = {"format": "format (contacts JSON)", "knowledge": "knowledge (invented facts, paraphrased questions)"}


@dataclass(frozen=True)
class TaskSetup:
    """One task of the comparison: its files (train, validation, test), the budget every method shares on it, and
    the metric rates are chosen by."""

    task: str
    kind: Kind
    train: Path
    validation: Path
    test: Path
    steps: int
    batch_size: int
    seq_len: int
    metric: str
    higher_is_better: bool
    about: str
    """What the splits are, for the report."""

    @property
    def title(self) -> str:
        return TITLES.get(self.task, self.task)


def carve(records: list[dict], n: int, salt: str) -> tuple[list[dict], list[dict]]:
    """(rest, n records drawn by a fixed seed), both in file order: the same split every run."""
    chosen = set(random.Random(f"lorakit.compare:{salt}").sample(range(len(records)), n))
    return [r for i, r in enumerate(records) if i not in chosen], [r for i, r in enumerate(records) if i in chosen]


def _write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, records)
    return path


def builtin_setup(task: str, budget: Budget, folder: Path, steps: int | None, limit: int | None) -> TaskSetup:
    """The built-in format (contacts) or knowledge task. Format: validation is the last 40 of the 200 held-out
    contacts messages, test the first 60. Knowledge: 60 of the 220 paraphrased questions (drawn once) validate,
    the other 160 test; every one asks about a fact taught in training."""
    quick = budget.step_share == 0
    full_steps, batch = (60, 8) if task == "format" else (120, 16)
    steps = steps or (2 if quick else max(1, round(full_steps * budget.step_share)))
    batch = 2 if quick else batch
    if task == "format":
        held = read_jsonl(contacts_path("eval"))
        n_val, n_test = (4, 8) if quick else (40, 60)
        validation, test = held[-n_val:], held[:n_test]
        train = read_jsonl(contacts_path("train"))
        about = f"trained on contacts_train.jsonl; validation: the last {n_val} of contacts_eval.jsonl, test: the first"
    else:
        rest, validation = carve(read_jsonl(knowledge_path("test")), 4 if quick else 60, "knowledge-validation")
        test = rest[:10] if quick else rest
        train = read_jsonl(knowledge_path("train"))
        about = (
            f"trained on knowledge_train.jsonl; validation: {len(validation)} paraphrased questions, test: the other"
        )
    test = test[:limit] if limit else test
    train = train[:16] if quick else train
    return TaskSetup(
        task, "contacts" if task == "format" else "knowledge", _write(folder / f"{task}-train.jsonl", train),
        _write(folder / f"{task}-validation.jsonl", validation), _write(folder / f"{task}-test.jsonl", test),
        steps, batch, 384, "exact_match", True, f"{about} {len(test)}",
    )  # fmt: skip


def reference(record: dict) -> str:
    """The reply a chat or completion record expects: its last assistant message, or its completion."""
    if "messages" in record:
        return str(next(m["content"] for m in reversed(record["messages"]) if m["role"] == "assistant"))
    return str(record["completion"])


def data_setup(data: str, eval_data: str | None, data_format: str, budget: Budget, folder: Path, steps: int | None,
               limit: int | None) -> TaskSetup:  # fmt: skip
    """The user's own data. The task is the one ``lorakit eval`` picks (generation for chat and completion
    records, scored by ROUGE-L, or exact match when every reference is a JSON object; loss for text records,
    scored by perplexity). Test: ``eval_data``, or 10% of ``data`` drawn once; validation: 10% of the rest of
    ``data`` (at most 100 records), drawn once; the method trains on what is left, 3 epochs of it at batch 8."""
    from lorakit.cli.eval import pick_task
    from lorakit.eval.metrics import json_object

    picked, records = pick_task("auto", data, data_format)
    kind: Kind = "loss" if picked == "loss" else "generation"
    assert records is not None
    if eval_data:
        test_kind, test = pick_task("auto", eval_data, data_format)
        assert test is not None
        if test_kind != kind:
            raise LorakitError(f"--eval-data {eval_data} holds {test_kind} records, --data {data} {kind} records")
        rest = records
    else:
        if len(records) < 3:
            raise LorakitError(
                f"--data {data}: {len(records)} records; compare needs at least 3 (train, validate, test)"
            )
        rest, test = carve(records, min(200, max(1, round(0.1 * len(records)))), "data-test")
    if len(rest) < 2:
        raise LorakitError(
            f"--data {data}: {len(rest)} record(s) to train on; compare carves a validation split from it"
        )
    train, validation = carve(rest, min(100, max(1, round(0.1 * len(records)))), "data-validation")
    quick = budget.step_share == 0
    train = train[:16] if quick else train
    test = test[:limit] if limit else test
    batch = 2 if quick else 8
    steps = steps or (2 if quick else max(1, math.ceil(3 * budget.step_share * len(train) / batch)))
    if kind == "loss":
        metric, higher = "perplexity", False
    else:
        references = [reference(r) for r in test]
        metric, higher = ("exact_match" if all(json_object(t) is not None for t in references) else "rouge_l"), True
    name = Path(data).name
    tested = f"{len(test)} records of {Path(eval_data).name}" if eval_data else f"{len(test)} more of it"
    about = (
        f"trained on {len(train)} records of {name}; validation: {len(validation)} other records of it, test: {tested}"
    )
    return TaskSetup(
        "data", kind, _write(folder / "data-train.jsonl", train), _write(folder / "data-validation.jsonl", validation),
        _write(folder / "data-test.jsonl", test), steps, batch, 1024, metric, higher, about,
    )  # fmt: skip
