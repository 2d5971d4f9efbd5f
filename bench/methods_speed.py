"""Training-step time and peak memory of LoRA, DoRA, IA3 and QLoRA on the built-in model, each in its own process.

    .venv/bin/python -m bench.methods_speed [--steps 4] [--batch-size 4] [--seq-len 128] [--precision fp32|bf16]

Each method runs in a fresh subprocess (so peak RSS is its own): load SmolLM2-135M-Instruct (QLoRA: its Linear
weights in NF4), add the adapter (LoRA, DoRA and QLoRA: r=16, alpha=32, all-linear; IA3: peft's targets), store
the frozen weights and compute as ``lorakit train`` does, then forward + backward + AdamW on the same
random-token batches. Prints the median step time, its ratio to LoRA's, and peak RSS; writes
bench/results/methods.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import print_table

METHODS = ("lora", "dora", "ia3", "qlora")
RESULTS = Path(__file__).resolve().parent / "results" / "methods.json"


def run_one(method: str, steps: int, batch_size: int, seq_len: int, precision: str) -> dict[str, float]:
    import lorakit
    from lorakit.cli.process import fix_mmap_threshold

    fix_mmap_threshold()  # as lorakit train does
    model, _ = lorakit.load_model(quantize="nf4" if method == "qlora" else None)
    config = lorakit.TrainConfig(method=method, r=16, lora_alpha=32, precision=precision, lr=1e-4,  # type: ignore[arg-type]
                                 max_steps=steps + 1, warmup_steps=0)  # fmt: skip
    trainer = lorakit.Trainer(model, None, config)  # lorakit train's step, adapter and precision rules
    trainable = trainer.trainable
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (batch_size, seq_len), generator=gen) for _ in range(steps + 1)]
    times = []
    for step, ids in enumerate(batches):
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        start = time.perf_counter()
        trainer.step(batch)
        if step > 0:  # the first step pays for allocations and kernel selection
            times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"trainable": trainable, "step_s": statistics.median(times), "peak_rss_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.batch_size, args.seq_len, args.precision)))
        return
    results = {}
    for method in METHODS:
        sizes = ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
        cmd = [sys.executable, "-m", "bench.methods_speed", "--one", method, *sizes, "--precision", args.precision]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
    base = results["lora"]["step_s"]
    columns = ["method", "trainable params", "median step (s)", "step vs LoRA", "peak RSS (MiB)"]
    rows = [[m, int(r["trainable"]), round(r["step_s"], 3), round(r["step_s"] / base, 2), round(r["peak_rss_mib"])]
            for m, r in results.items()]  # fmt: skip
    print_table(columns, rows)
    command = "python -m bench.methods_speed " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "one"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    payload = {
        "name": "methods",
        "title": "LoRA vs DoRA vs IA3 vs QLoRA: training step on SmolLM2-135M",
        "command": command,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "columns": columns,
        "rows": rows,
        "notes": f"batch {args.batch_size} x {args.seq_len} random tokens, {args.precision}, median of "
        f"{args.steps} steps after one warm-up; each method in its own process (peak RSS includes the model). "
        "LoRA/DoRA/QLoRA r=16 all-linear (QLoRA: NF4 base, the rest of the model in bf16); IA3 on k_proj, v_proj, "
        "down_proj. Loss through lorakit train's chunked head. Compare ratios: the machine is shared.",
    }
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
