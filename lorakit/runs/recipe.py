"""How a run trains: the part of ``train_run`` that depends on the training method, and supervised fine-tuning's.

``train_run`` owns the order of a run and its folder (settings, resume, checkpoints, the metrics log, evaluation on
schedule, plot, card, summary). A recipe owns what depends on the method: which records it reads, how they become
the trainer's data, how the trainer fits them, what a step's line in ``metrics.jsonl`` holds, what the held-out
loss is, and the files of its own the run keeps. ``Supervised`` is ``lorakit train``'s: chat, completion and text
records, the causal-LM loss on the labelled tokens. Another method (preference pairs, sampled rewards) is a class
with the methods of ``Recipe``, given to ``train_run(config, recipe=...)``; the run folder does not change for it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from lorakit.data.dataset import Dataset, tokenize_data
from lorakit.data.formats import shared_system_prompt
from lorakit.data.jsonl import Records
from lorakit.data.sources import read_data
from lorakit.errors import LorakitError
from lorakit.runs.config import RunConfig
from lorakit.runs.folder import RunFolder
from lorakit.tasks.contacts import builtin_path
from lorakit.train.trainer import Trainer, TrainResult

OnStep = Callable[[Trainer, dict[str, float]], None]


class Recipe(Protocol):
    """The method-dependent pieces of a run, called by ``train_run`` in this order."""

    def read(self) -> str:
        """Read and check the records (before the model is loaded: a broken line fails fast); one line on them."""
        ...

    def tokenize(self, tokenizer: Any) -> None:
        """Turn the records into the trainer's data (inside the run's loading hook, with the model's tokenizer)."""
        ...

    def steps(self, trainer: Trainer) -> int:
        """The optimiser steps of the whole run."""
        ...

    def fit(self, trainer: Trainer, on_step: OnStep, progress: bool) -> TrainResult:
        """Train from ``trainer.step_count`` to the last step, calling ``on_step(trainer, metrics)`` after each."""
        ...

    def record(self, metrics: dict[str, float]) -> dict[str, Any]:
        """A step's line in ``metrics.jsonl`` (``kind`` "train", ``step``, ``loss``, ...) from its metrics."""
        ...

    def evaluates(self) -> bool:
        """Whether the run has held-out data to evaluate on."""
        ...

    def evaluate(self, trainer: Trainer) -> float:
        """The held-out loss (on every rank that ``Processes.evaluates``)."""
        ...

    def summary(self) -> dict[str, Any]:
        """What the run's summary and model card say about the data (``data``, ``data_format``, ``n_examples``,
        ``n_truncated``, ``n_skipped``)."""
        ...

    def data_name(self) -> str:
        """The training data's name, for the loss plot's title."""
        ...

    def write_files(self, run: RunFolder) -> dict[str, Any]:
        """Write the recipe's own files into the run folder (rank 0, after the adapter); what the summary adds."""
        ...


class Supervised:
    """Supervised fine-tuning: ``--data`` (the built-in contacts set without it) and ``--eval-data`` or
    ``--eval-split``, tokenized with label masks, fitted by ``Trainer.fit`` (``lorakit.train.trainer``)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.source = config.data or str(builtin_path("train"))
        self.records: list[dict] = []
        self.eval_records: list[dict] = []
        self.read_as = ""

    def read(self) -> str:
        c = self.config
        read = read_data(self.source, c.data_format)
        eval_read = read_data(c.eval_data, c.data_format) if c.eval_data else None
        self.records, self.eval_records = read.records, eval_read.records if eval_read else []
        if c.eval_split:
            self.records, self.eval_records = split_off(self.records, c.eval_split, c.seed)
        self.read_as = read.data_format
        return describe_read(read, eval_read, len(self.eval_records) if c.eval_split else None)

    def tokenize(self, tokenizer: Any) -> None:
        c = self.config
        self.data = tokenize_data(tokenizer, self.records, c.seq_len, source=self.source)  # records: checked already
        eval_name = c.eval_data or f"{self.source} (held out)"
        self.eval_data: Dataset | None = (
            tokenize_data(tokenizer, self.eval_records, c.seq_len, source=eval_name) if self.eval_records else None
        )
        self._eval_batches: list[dict[str, Any]] | None = None

    def steps(self, trainer: Trainer) -> int:
        return trainer.steps_for(self.data)

    def fit(self, trainer: Trainer, on_step: OnStep, progress: bool) -> TrainResult:
        return trainer.fit(self.data, on_step=on_step, progress=progress)

    def record(self, metrics: dict[str, float]) -> dict[str, Any]:
        m = metrics
        line = {
            "kind": "train",
            "step": int(m["step"]),
            "loss": round(m["loss"], 5),
            "lr": m["lr"],
            "grad_norm": round(m["grad_norm"], 4) if math.isfinite(m["grad_norm"]) else None,
            "tokens": int(m["tokens"]),
            "seconds": round(m["seconds"], 3),
            "peak_rss_mb": m["peak_rss_mb"],
        }
        # on a GPU its peak memory; in fp16 the loss scale and whether an overflow skipped the step
        line.update({k: m[k] for k in ("peak_gpu_mb", "loss_scale") if k in m})
        if "skipped" in m:
            line["skipped"] = bool(m["skipped"])
        return line

    def evaluates(self) -> bool:
        return self.eval_data is not None and bool(self.eval_data.examples)

    def evaluate(self, trainer: Trainer) -> float:
        if self._eval_batches is None:  # made once, on first use
            assert self.eval_data is not None
            self._eval_batches = trainer.eval_batches(self.eval_data)
        return trainer.evaluate(self._eval_batches)

    def data_name(self) -> str:
        return Path(self.source).name

    def summary(self) -> dict[str, Any]:
        stats = self.data.stats
        return {"data": self.source, "data_format": self.read_as, "n_examples": len(self.data.examples),
                "n_truncated": stats.n_truncated, "n_skipped": stats.n_skipped}  # fmt: skip

    def write_files(self, run: RunFolder) -> dict[str, Any]:
        system_prompt = shared_system_prompt(self.records)
        if system_prompt is not None:  # the model learnt to answer under it: chat, generate and serve send it
            run.write_system_prompt(system_prompt)
        if self.config.eval_split:  # for lorakit eval --data
            run.write_held_out(self.eval_records)
        return {"system_prompt": system_prompt}


def split_off(records: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): ``share`` of the records (at least one), drawn by ``seed``, in their file order."""
    if len(records) < 2:
        raise LorakitError(f"--eval-split needs at least 2 records to hold some out, the data has {len(records)}")
    n = min(len(records) - 1, max(1, round(share * len(records))))
    held = set(random.Random(f"lorakit.eval_split:{seed}").sample(range(len(records)), n))
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def describe_read(read: Records, eval_read: Records | None, held_out: int | None) -> str:
    line = read.describe()
    if eval_read is not None:
        line += f"; eval: {eval_read.describe()}"
    if held_out is not None:
        line += f"; {held_out} held out for the eval loss (--eval-split)"
    return line
