"""Training-step speed ratios robust to a busy machine: several configurations in ONE process, steps alternating.

    python -m bench.interleaved [--configs "lorakit (defaults),peft fp32,peft bf16 autocast"] [--rounds 2]

bench.train_speed runs each configuration in its own process (its own peak RSS), one after another, so on a
shared machine a configuration may meet a different load than the next. Here every round runs one step of each
configuration in turn (after one warm-up round), so load changes hit all of them alike; only speed is measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import RESULTS, median, write_result
from bench.train_speed import CONFIGS, setup


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="lorakit (defaults),peft fp32,peft bf16 autocast")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    steps = {name: setup(*CONFIGS[name], quick=args.quick) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds + 1):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            steps[name][0]()
            if round_ > 0:  # round 0 warms up oneDNN
                times[name].append(time.perf_counter() - start)
        print(f"round {round_}: " + ", ".join(f"{n} {t[-1]:.1f} s" for n, t in times.items() if t), flush=True)
    ref = median(times[names[0]])
    rows = [[name, steps[name][2], round(median(t), 2), round(steps[name][1] / median(t), 1),
             f"{ref / median(t):.2f}x", f"{median(t) / ref:.2f}x"] for name, t in times.items()]  # fmt: skip
    notes = (
        f"{len(names)} configurations in one process, {args.rounds} timed round(s) after a warm-up round, one step "
        f"of each per round, order reversed every other round; medians. Same model, batch and LoRA config as the "
        f"training table. 'time vs {names[0]}' is the factor by which a step is slower than {names[0]}'s."
    )
    command = f"python -m bench.interleaved --configs '{args.configs}' --rounds {args.rounds}"
    columns = ["configuration", "computes in", "s/step", "tokens/s", f"speed vs {names[0]}", f"time vs {names[0]}"]
    return write_result("train_interleaved", "Training step, configurations alternating in one process", command,
                        columns, rows, notes, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
