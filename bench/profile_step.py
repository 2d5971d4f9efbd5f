"""Where a training step's time goes: torch.profiler's top operators for one configuration of bench.train_speed.

    python -m bench.profile_step [--config "lorakit (defaults)"] [--top 12] [--quick] [--data chat|dense]

One warm-up step, then one profiled step; the table lists the operators with the most self CPU time (the time
spent in the operator itself, not in what it calls), which is what explains a missed throughput target.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from bench.common import DATA, RESULTS, run_child, write_result
from bench.train_speed import DATA_TITLE, KNOWN, describe_data, setup


def child(config: str, top: int, quick: bool, data: str) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    step, tokens, dtype, _ = setup(*KNOWN[config], quick=quick, data=data)
    step()  # warm-up (and compilation)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [[e.key, e.count, round(e.self_cpu_time_total / 1000, 1), f"{100 * e.self_cpu_time_total / total:.1f}%"]
            for e in events[:top]]  # fmt: skip
    return {"rows": rows, "total_ms": total / 1000, "tokens": tokens, "dtype": dtype}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="lorakit (defaults)", choices=list(KNOWN))
    parser.add_argument("--data", choices=DATA, default="chat", help="the batch: contacts chat or dense labels")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.config, args.top, args.quick, args.data)))
        return args.out
    extra = ["--quick"] if args.quick else []
    result = run_child(
        "bench.profile_step", ["--child", "--config", args.config, "--top", str(args.top), "--data", args.data, *extra]
    )
    slug = re.sub("_+", "_", "".join(c if c.isalnum() else "_" for c in args.config)).strip("_")
    notes = (
        f"One profiled training step of '{args.config}' ({describe_data(args.data, result['tokens'])}, computing in "
        f"{result['dtype']}); {result['total_ms']:.0f} ms of self CPU time in all (profiler overhead included)."
    )
    command = f'python -m bench.profile_step --config "{args.config}"' + (" --quick" if args.quick else "")
    name = f"profile_{slug}"
    if args.data != "chat":
        command += f" --data {args.data}"
        name += f"_{args.data}"
    return write_result(name, f"Profile of one step: {args.config}{DATA_TITLE[args.data]}", command,
                        ["operator", "calls", "self CPU ms", "share"], result["rows"], notes, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
