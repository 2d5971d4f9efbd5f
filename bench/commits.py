"""``lorakit train`` from two source trees, side by side: step time and peak RSS, alternating runs.

    git worktree add /tmp/lorakit-old <commit>
    python -m bench.commits --old /tmp/lorakit-old --new . --steps 40 --rounds 2

Each run is ``python -m lorakit train`` in its own process with the tree's folder first on ``sys.path`` (the same
venv for both), on the demo's data and settings unless ``--`` passes more flags. Reported per tree: median seconds
per step over steps 3.. (from metrics.jsonl), the run's peak RSS (the kernel's high-water mark of the process), and
the peak RSS metrics.jsonl logged at the last step; and new/old ratios. Old and new alternate, so machine load hits
both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import print_table


def one_run(tree: Path, steps: int, extra: list[str], threads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = [sys.executable, "-m", "lorakit", "train", "--max-steps", str(steps), "--output", str(out), *extra]
        env = {**os.environ, "PYTHONPATH": str(tree.resolve()), "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{tree}: lorakit train failed:\n{proc.stderr.read()[-2000:] if proc.stderr else ''}")
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in records if r.get("kind") == "train"]
        return {
            "s_per_step": statistics.median(r["seconds"] for r in train[2:] or train),
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "logged_peak_mb": train[-1].get("peak_rss_mb") or float("nan"),
            "final_loss": train[-1]["loss"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the old source tree (a worktree of a commit)")
    parser.add_argument("--new", type=Path, default=Path("."), help="the new source tree")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("extra", nargs="*", help="more lorakit train flags (after --)")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for r in range(args.rounds):
        for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
            runs[name].append(one_run(getattr(args, name), args.steps, args.extra, args.threads))
            print(f"round {r + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    def every(name: str, key: str) -> str:
        return ", ".join(f"{run[key]:.4g}" for run in runs[name])

    labels = {"s_per_step": "s/step (median of steps 3..)", "peak_rss_mb": "peak RSS of the run (MB)",
              "logged_peak_mb": "peak RSS logged at the last step (MB)", "final_loss": "final loss"}  # fmt: skip
    rows: list[list[Any]] = []
    for key, label in labels.items():
        old, new = med("old", key), med("new", key)
        rows.append([label, f"{old:.4g} ({every('old', key)})", f"{new:.4g} ({every('new', key)})", f"{new / old:.3f}"])
    print(f"lorakit train --max-steps {args.steps} {' '.join(args.extra)}: {args.rounds} runs each, alternating, "
          f"{args.threads} threads; medians (every run)")  # fmt: skip
    print_table(["", f"old ({args.old})", f"new ({args.new})", "new / old"], rows)


if __name__ == "__main__":
    main()
