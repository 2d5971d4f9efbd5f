"""The demo's training step under two versions of lorakit, side by side: is a change free on the CPU?

    python -m bench.versions_speed --old /tmp/lorakit-main [--new .] [--steps 20] [--repeats 3] [--threads 1]

``--old`` and ``--new`` are folders holding a ``lorakit`` package (e.g. ``git archive <commit> lorakit | tar -x -C
DIR``). Each run is ``python -m lorakit train --max-steps N`` (the demo's settings, built-in data) in its own process
with that folder first on the path and ``--threads`` threads; runs alternate old/new, the order reversed every other
pair, so a busy machine slows both alike. Reported: the median over runs of each run's median step time (steps after
the second), the ratio new/old, peak RSS, and the final loss, which must be the same when the CPU computation is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, median, print_table, write_result


def run(tree: Path, steps: int, threads: int, output: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve()), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}  # fmt: skip
    argv = [sys.executable, "-m", "lorakit", "train", "--max-steps", str(steps), "--output", str(output), "--overwrite"]
    proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: lorakit train failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    return {"seconds": median([r["seconds"] for r in train[2:]]), "loss": train[-1]["loss"],
            "losses": [r["loss"] for r in train], "rss": train[-1]["peak_rss_mb"]}  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, default=ROOT)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    trees = {"old": args.old, "new": args.new}
    results: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name in ("old", "new") if rep % 2 == 0 else ("new", "old"):
                result = run(trees[name], args.steps, args.threads, Path(tmp) / name)
                results[name].append(result)
                print(f"{name}: {result['seconds']:.3f} s/step, final loss {result['loss']}", flush=True)
    old = median([r["seconds"] for r in results["old"]])
    same = all(a["losses"] == b["losses"] for a in results["old"] for b in results["new"])
    columns = ["version", "source", "runs", "median s/step", "vs old", "peak RSS MiB", "final loss",
               "per-step losses equal to old's"]  # fmt: skip
    rows = []
    for name, runs in results.items():
        seconds = median([r["seconds"] for r in runs])
        rows.append([name, str(trees[name]), len(runs), round(seconds, 3), f"{seconds / old:.3f}x",
                     median([r["rss"] for r in runs]), runs[-1]["loss"], "-" if name == "old" else same])  # fmt: skip
    print_table(columns, rows)
    notes = (f"lorakit train --max-steps {args.steps} with the demo's settings on the built-in model and data, "
             f"{args.threads} thread(s) per run, {args.repeats} runs per version alternating (order reversed every "
             "other pair); s/step is the median over runs of each run's median step (steps 3 on). 'per-step losses "
             "equal' compares every step's logged loss of every run: True means the CPU computation is unchanged."
             )  # fmt: skip
    command = (f"python -m bench.versions_speed --old {args.old} --steps {args.steps} --repeats {args.repeats} "
               f"--threads {args.threads}")  # fmt: skip
    return write_result("versions_speed", "The demo's CPU training step: two lorakit versions side by side",
                        command, columns, rows, notes, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
