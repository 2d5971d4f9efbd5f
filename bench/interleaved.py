"""Training-step speed ratios robust to a busy machine: several configurations in ONE process, steps alternating.

    python -m bench.interleaved [--configs "lorakit (defaults),peft fp32,peft bf16 autocast"] [--rounds 2]
                                [--data chat|dense]

bench.train_speed runs each configuration in its own process (its own peak RSS), one after another, so on a
shared machine a configuration may meet a different load than the next. Here every round runs one step of each
configuration in turn (after one step counted by torch's FlopCounterMode and one warm-up round, in which a
``--compile`` configuration compiles), so load changes hit all of them alike; only speed is measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import DATA, RESULTS, matmul_gflops, median, write_result
from bench.train_speed import DATA_TITLE, KNOWN, count_flops, describe_data, result_name, setup


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="lorakit (defaults),peft fp32,peft bf16 autocast")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", choices=DATA, default="chat", help="the batch: contacts chat or dense labels")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = set(names) - set(KNOWN)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}; known: {list(KNOWN)}")
    size = 256 if args.quick else 2048
    peaks = {"fp32": matmul_gflops(torch.float32, size), "bf16": matmul_gflops(torch.bfloat16, size)}
    steps = {name: setup(*KNOWN[name], quick=args.quick, data=args.data) for name in names}
    flops = {name: count_flops(steps[name][0]) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    first: dict[str, float] = {}
    for round_ in range(args.rounds + 1):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            steps[name][0]()
            seconds = time.perf_counter() - start
            if round_ > 0:  # round 0 warms up oneDNN and compiles
                times[name].append(seconds)
            else:
                first[name] = seconds
        print(f"round {round_}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items() if t), flush=True)
    for key, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):  # the best seen in the run
        peaks[key] = max(peaks[key], matmul_gflops(dtype, size))
    ref = median(times[names[0]])
    rows = []
    for name, t in times.items():
        sec, dtype, gflop = median(t), steps[name][2], flops[name] / 1e9
        rows.append([name, dtype, round(sec, 3), round(steps[name][1] / sec, 1), f"{ref / sec:.2f}x",
                     f"{sec / ref:.2f}x", round(gflop, 1), round(gflop / sec, 1),
                     f"{100 * gflop / sec / peaks[dtype]:.0f}%", round(first[name], 1)])  # fmt: skip
    data = describe_data(args.data, steps[names[0]][1])
    notes = (
        f"{len(names)} configurations in one process, {args.rounds} timed round(s) after a warm-up round, one step "
        f"of each per round, order reversed every other round; medians. {data[0].upper()}{data[1:]}; "
        f"the same model and LoRA config as the training table. 'time vs {names[0]}' is the factor by which a step "
        f"is slower than {names[0]}'s. GFLOP/step: the matmul FLOPs of one step as executed eagerly (torch "
        f"FlopCounterMode; a compiled step does the same products). Matmul peak measured in the same run: fp32 "
        f"{peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s (best 2048^3 product). 'warm-up s': the "
        "warm-up round's step (a --compile configuration compiles its decoder layer there)."
    )
    command = f"python -m bench.interleaved --configs '{args.configs}' --rounds {args.rounds}"
    if args.data != "chat":
        command += f" --data {args.data}"
    columns = ["configuration", "computes in", "s/step", "tokens/s", f"speed vs {names[0]}", f"time vs {names[0]}",
               "GFLOP/step", "GFLOP/s", "% of matmul peak", "warm-up s"]  # fmt: skip
    title = "Training step, configurations alternating in one process" + DATA_TITLE[args.data]
    return write_result(result_name(args.data, "train_interleaved"), title, command, columns, rows, notes,
                        args.out)  # fmt: skip


if __name__ == "__main__":
    main()
