"""``make bench``: the training and inference benchmarks, then docs/benchmarks.md from all results.

    python -m bench.suite [--quick] [--out DIR] [--steps 3] [--repeats 2]

``--quick`` runs a tiny random model (seconds of compute; it checks the harness, its numbers mean nothing) and
writes to ``--out`` without touching docs/benchmarks.md unless ``--out`` is bench/results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import inference, report, train_speed
from bench.common import RESULTS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", default="")
    args = parser.parse_args(argv)
    out = args.out or (Path("/tmp/lorakit-bench-quick") if args.quick else RESULTS)
    quick = ["--quick"] if args.quick else []
    common = ["--out", str(out), *quick]
    train_speed.main(["--steps", str(args.steps), "--repeats", str(args.repeats), "--configs", args.configs, *common])
    inference.main(["--repeats", str(max(3, 2 * args.repeats + 1)), *common])
    if out.resolve() == RESULTS.resolve():
        report.main([])
    else:
        report.main(["--results", str(out), "--output", str(out / "benchmarks.md")])


if __name__ == "__main__":
    main()
