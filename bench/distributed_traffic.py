"""Gradient bytes a data-parallel step sends: LoRA (measured) vs full fine-tuning, on the built-in model.

    .venv/bin/python -m bench.distributed_traffic [--processes 2] [--r 16] [--target-modules all-linear]

Launches ``torchrun`` with N CPU processes (gloo) for 2 steps of ``lorakit train`` on SmolLM2-135M and reads
two lines of its log: the bytes DDP's communication hook counted per step (LoRA's adapter gradients) and
the bytes full fine-tuning would all-reduce (every base weight's fp32 gradient, from the parameter sizes).
Prints a table and writes bench/results/distributed_traffic.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _number(pattern: str, log: str) -> int:
    found = re.search(pattern, log)
    if found is None:
        raise SystemExit(f"no line matching {pattern!r} in the training log")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--target-modules", default="all-linear")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as output:
        train = ["train", "--max-steps=2", "--batch-size=1", "--seq-len=128", "--precision=fp32",
                 f"--r={args.r}", f"--lora-alpha={2 * args.r}", f"--target-modules={args.target_modules}",
                 f"--output={output}"]  # fmt: skip
        launcher = ["--nnodes=1", f"--nproc-per-node={args.processes}", "--master-addr=127.0.0.1",
                    f"--master-port={_free_port()}"]  # fmt: skip
        command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "lorakit", "--", *train]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(log[-3000:])
    trainable = _number(r"LoRA .*?: ([\d,]+) trainable", log)
    full = _number(r"full fine-tuning would send ([\d,]+)", log)
    measured = _number(r"all-reduced ([\d,]+) bytes of gradients per step \(measured\)", log)
    rows = [
        [f"LoRA r={args.r}, {args.target_modules} (measured)", trainable, measured, f"{measured / 1e6:.1f}"],
        ["full fine-tuning (from parameter sizes)", full // 4, full, f"{full / 1e6:.1f}"],
    ]
    columns = ["gradients", "parameters with gradients", "bytes all-reduced per step", "MB"]
    print(f"| {' | '.join(columns)} |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row[0]} | {row[1]:,} | {row[2]:,} | {row[3]} |")
    print(f"LoRA sends {100 * measured / full:.1f}% of full fine-tuning's bytes ({full / measured:.1f} x less)")
    RESULTS.mkdir(exist_ok=True)
    result = {
        "name": "distributed_traffic",
        "title": "Gradient bytes per data-parallel step: LoRA vs full fine-tuning (SmolLM2-135M, fp32)",
        "command": " ".join(["python -m bench.distributed_traffic", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.processes} processes (gloo)",
        "columns": columns,
        "rows": rows,
        "notes": f"LoRA sends {100 * measured / full:.1f}% of the bytes ({full / measured:.1f} x less); the same per "
        "step whatever the batch size or --grad-accum. LoRA's bytes are counted by DDP's communication hook.",
    }
    (RESULTS / "distributed_traffic.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
