"""Memory of QLoRA against LoRA on the built-in SmolLM2-135M: linear-weight bytes and a training step's peak RSS.

    .venv/bin/python -m bench.qlora_memory [--batch-size 8] [--steps 2]

Each configuration runs in its own child process (so one's allocations cannot hide another's peak): load the
model, add LoRA r=16 on all linear layers, and run ``--steps`` training steps (forward, backward, AdamW) on the
same batch of the built-in contacts data under bf16 autocast. Reported per child: the bytes of the Linear
weights LoRA wraps (quantised: codes + scales), the bytes malloc holds live when the forward ends, the peak RSS
of the whole child (``ru_maxrss``: loading included) and, where Linux lets a process reset its high-water mark
(``/proc/self/clear_refs``), the peak RSS during the training steps alone. Writes bench/results/qlora.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import print_table

CONFIGS: dict[str, tuple[str | None, str | None]] = {
    # name: (load_model dtype, quantize)
    "LoRA, fp32 base": ("float32", None),
    "LoRA, bf16 base": ("bfloat16", None),
    "QLoRA, int8 base (--bits 8)": ("bfloat16", "int8"),
    "QLoRA, NF4 base (--bits 4)": ("bfloat16", "nf4"),
}
RESULTS = Path(__file__).parent / "results" / "qlora.json"


def _status_kib(field: str) -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def child(name: str, batch_size: int, steps: int) -> dict[str, object]:
    import lorakit
    from lorakit.adapters import adapter_modules
    from lorakit.cli.process import fix_mmap_threshold, loading_heap
    from lorakit.data.batching import batch_order, collate
    from lorakit.data.jsonl import read_jsonl
    from lorakit.data.tokenize import tokenize_dataset
    from lorakit.layers import weight_of
    from lorakit.memory import heap_in_use_mib
    from lorakit.quant import quantized_bytes
    from lorakit.tasks.contacts import builtin_path

    dtype, quantize = CONFIGS[name]
    torch.manual_seed(0)
    start = time.perf_counter()
    with loading_heap():  # as lorakit train loads and tokenizes
        model, tokenizer = lorakit.load_model(dtype=dtype, quantize=quantize)  # type: ignore[arg-type]
        load_seconds = time.perf_counter() - start
        examples, _ = tokenize_dataset(tokenizer, read_jsonl(builtin_path("train")), 384)
    rss_loaded = _status_kib("VmRSS")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    wrapped = [m.base_layer for _, m in adapter_modules(model)]
    weight_bytes = sum(quantized_bytes(weight_of(m)) for m in wrapped)
    weight_numel = sum(weight_of(m).numel() for m in wrapped)
    order = batch_order([len(e.input_ids) for e in examples], batch_size, 0, 0)
    batch = collate([examples[i] for i in order[0]], tokenizer.pad_token_id)
    fix_mmap_threshold()
    config = lorakit.TrainConfig(r=16, lora_alpha=32, lr=1e-4, precision="bf16", max_steps=steps, warmup_steps=0)
    trainer = lorakit.Trainer(model, tokenizer, config)  # lorakit train's step; the adapter is already there
    in_use: list[float | None] = []
    # the decoder's output: the activations are all held here (the head's loss runs in chunks after it)
    model.get_decoder().register_forward_hook(lambda *_: in_use.append(heap_in_use_mib()))
    rss_before = _status_kib("VmRSS")
    can_reset = _reset_peak()
    times, loss = [], float("nan")
    for _ in range(steps):
        t = time.perf_counter()
        loss = trainer.step(batch)["loss"]
        times.append(time.perf_counter() - t)
    return {
        "name": name, "weight_bytes": weight_bytes, "weight_numel": weight_numel,
        "rss_loaded_mib": (rss_loaded or 0) / 1024, "rss_before_steps_mib": (rss_before or 0) / 1024,
        "step_peak_mib": (_status_kib("VmHWM") or 0) / 1024 if can_reset else None,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "live_mib": max(in_use) if None not in in_use else None,
        "load_seconds": load_seconds, "step_seconds": min(times), "loss": loss,
    }  # fmt: skip


def _median_run(name: str, got: list[dict[str, Any]]) -> dict[str, Any]:
    """One row per config: the median of each measured number over the repeats (and every run's peaks)."""
    merged: dict[str, Any] = {"name": name, "runs": len(got)}
    for key, value in got[0].items():
        if isinstance(value, (int, float)) and all(isinstance(r[key], (int, float)) for r in got):
            merged[key] = statistics.median(r[key] for r in got)
    merged["step_peaks_mib"] = [round(r["step_peak_mib"]) for r in got if r["step_peak_mib"] is not None]
    merged["live_mibs"] = [round(r["live_mib"], 1) for r in got if r.get("live_mib") is not None]
    return merged


def _rounded(value: float | None) -> int | None:
    return None if value is None else round(value)


def _ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else round(value / reference, 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs per config (medians are reported)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch_size, args.steps)))
        return
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    for k in range(args.repeats):  # configs alternate; repeat k runs every config with Python hash seed k
        for name in CONFIGS:
            argv = [sys.executable, "-m", "bench.qlora_memory", "--child", name,
                       "--batch-size", str(args.batch_size), "--steps", str(args.steps)]  # fmt: skip
            env = {**os.environ, "PYTHONHASHSEED": str(k)}
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"done: {name}", file=sys.stderr)
    results = [_median_run(name, got) for name, got in runs.items()]
    bf16 = next(r for r in results if r["name"] == "LoRA, bf16 base")
    columns = ["config", "linear weights MiB", "x bf16 bytes", "live MiB after forward", "x LoRA-bf16",
               "step peak RSS MiB (median)", "x LoRA-bf16", "step peak RSS range", "peak RSS MiB (ru_maxrss)",
               "s/step (noisy)"]  # fmt: skip
    rows = []
    for r in results:
        peaks = r["step_peaks_mib"]
        rows.append([
            r["name"], round(r["weight_bytes"] / 2**20, 1), round(r["weight_bytes"] / (2 * r["weight_numel"]), 3),
            _rounded(r.get("live_mib")), _ratio(r.get("live_mib"), bf16.get("live_mib")),
            _rounded(r.get("step_peak_mib")), _ratio(r.get("step_peak_mib"), bf16.get("step_peak_mib")),
            f"{min(peaks)}-{max(peaks)}" if peaks else None, round(r["ru_maxrss_mib"]), round(r["step_seconds"], 2),
        ])  # fmt: skip
    command = (
        f"python -m bench.qlora_memory --batch-size {args.batch_size} --steps {args.steps} --repeats {args.repeats}"
    )
    notes = (
        f"SmolLM2-135M-Instruct, LoRA r=16 on all 210 Linear layers, one batch of {args.batch_size} built-in "
        f"contacts examples, {args.steps} training steps (forward, backward, AdamW) under bf16 autocast, each config "
        f"in its own process, {args.repeats} runs per config alternating (run k of every config with Python hash "
        "seed k), medians; the raw section lists every run's peak. Each child loads the model and tokenizes the "
        "data inside lorakit.cli.process.loading_heap and trains with glibc's mmap threshold pinned at 4 MiB, as "
        "lorakit "
        "train does; without the first, a run's step peak landed in one of two modes 300-400 MiB apart "
        "(docs/qlora.md). "
        "'linear weights' = the bytes of the weights LoRA wraps (NF4: 4-bit codes + int8 block scales + float scale "
        "factors); the output head and embeddings are never quantised. 'live after forward' = what malloc has "
        "handed out and not had back when the forward ends (mallinfo2: heap in use + mapped blocks), the same in "
        "every run; 'step peak' is the RSS high-water mark during the steps alone (VmHWM after "
        "/proc/self/clear_refs), ru_maxrss includes loading. Times: rough ratios only."
    )
    payload = {"name": "qlora", "title": "QLoRA memory (SmolLM2-135M)", "command": command,
               "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
               "columns": columns, "rows": rows, "notes": notes, "raw": results}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print_table(columns, rows)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
