"""Sequence packing against length-grouped batches on the demo's data, side by side in one run.

    .venv/bin/python -m bench.packing [--steps 8] [--out bench/results]

Two LoRA trainers with the demo's settings (r=16 all-linear, batch 8, seq_len 384, precision auto) on the built-in
model and the built-in contacts training set; one batches examples of similar length (lorakit's default), the
other packs several examples into each row of up to 384 tokens. Their steps alternate, so machine noise hits both
alike; the first step of each warms up the kernels and is not timed. Reports the padding share of a whole epoch,
steps per epoch, the median step time, and real (non-padding) tokens and examples per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import lorakit
from bench.common import RESULTS, print_table, write_result
from lorakit.tasks.contacts import TRAINING, builtin_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    base = lorakit.TrainConfig(**TRAINING)  # type: ignore[arg-type]
    runs = {}
    for name, config in (("length-grouped (default)", base), ("packed", dataclasses.replace(base, packing=True))):
        model, tokenizer = lorakit.load_model()
        trainer = lorakit.Trainer(model, tokenizer, config)
        data = trainer.tokenize(str(builtin_path("train")))
        runs[name] = (trainer, trainer.batches(data))
    times: dict[str, list[float]] = {n: [] for n in runs}
    tokens: dict[str, list[int]] = {n: [] for n in runs}
    examples: dict[str, list[int]] = {n: [] for n in runs}
    for step in range(args.steps + 1):
        for name, (trainer, batches) in runs.items():
            batch = batches[step]
            start = time.perf_counter()
            trainer.step(batch)
            if step > 0:
                times[name].append(time.perf_counter() - start)
                tokens[name].append(int(batch["attention_mask"].sum()))
                examples[name].append(_examples_in(batch))
    rows = []
    reference = None
    for name, (_trainer, batches) in runs.items():
        seconds = sum(times[name])
        tok_s = sum(tokens[name]) / seconds
        reference = reference or tok_s
        step_s = round(statistics.median(times[name]), 2)
        rows.append([name, batches.per_epoch, f"{100 * batches.padding():.1f}%", step_s, round(tok_s),
                     round(sum(examples[name]) / seconds, 1), f"{tok_s / reference:.2f}x"])  # fmt: skip
    columns = [
        "batches",
        "steps/epoch",
        "padding (epoch)",
        "s/step (median)",
        "tokens/s",
        "examples/s",
        "tokens/s vs default",
    ]
    print_table(columns, rows)
    write_result("packing", "Sequence packing vs length-grouped batches (demo data)",
                 f"python -m bench.packing --steps {args.steps}", columns, rows,
                 f"Built-in SmolLM2-135M, LoRA r=16 all-linear, batch 8, seq_len 384, 1000 contacts examples; "
                 f"{args.steps} alternating timed steps each after one warm-up step. Tokens are real tokens "
                 "(padding not counted).", args.out)  # fmt: skip


def _examples_in(batch: dict) -> int:
    """Examples in a batch: one per row, or one per position-id restart in packed rows (padding not counted)."""
    if "position_ids" not in batch:
        return int(batch["input_ids"].shape[0])
    starts = (batch["position_ids"] == 0) & (batch["attention_mask"] == 1)
    return int(starts.sum())


if __name__ == "__main__":
    main()
