"""A batch whose rows use 4 different adapters, against the same batch on one adapter and against peft.

    .venv/bin/python -m bench.mixed_adapters [--iters 6] [--batch 4] [--seq 256] [--decode-batch 16]

SmolLM2-135M, float32, four random r=16 all-linear adapters. Forward passes only (inference), no_grad:
(1) a prefill of ``batch x seq`` tokens and (2) one decode step of ``decode-batch`` rows with a ``seq``-token KV
cache, the shape a server runs most. Variants alternate within each iteration so machine noise hits them alike;
the best time of each is reported. Writes bench/results/mixed_adapters.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

import lorakit
from bench.common import print_table

RESULTS = Path(__file__).parent / "results"
CACHE_KWARG = (
    "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"
)  # renamed in transformers 5.x
NAMES = ["a0", "a1", "a2", "a3"]
# All linear layers but the head, spelled out: "all-linear" resolved on a model that already carries an adapter
# would also pick up the first adapter's own lora_A/lora_B layers.
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), "
            f"torch {torch.__version__}, shared machine: timings are noisy, compare ratios within one run")  # fmt: skip


def write_result(name: str, title: str, columns: list[str], rows: list[list[Any]], notes: str) -> Path:
    """bench/results/<name>.json in the format bench/report.py renders into docs/benchmarks.md."""
    RESULTS.mkdir(exist_ok=True)
    command = "python -m bench." + name + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    payload = {"name": name, "title": title, "command": command, "machine": machine(), "columns": columns,
               "rows": rows, "notes": notes}  # fmt: skip
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def build_models(folder: Path) -> tuple[Any, Any]:
    """lorakit's and peft's copies of SmolLM2, each holding the same four adapters."""
    base, _ = lorakit.load_model()
    ours = copy.deepcopy(base)
    for seed, name in enumerate(NAMES):
        torch.manual_seed(seed)
        config = lorakit.LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False)
        lorakit.add_adapter(ours, config, name)
        lorakit.save_adapter(ours, folder, name)
    theirs = peft.PeftModel.from_pretrained(base, folder / NAMES[0], adapter_name=NAMES[0])
    for name in NAMES[1:]:
        theirs.load_adapter(folder / name, adapter_name=name)
    return ours.eval(), theirs.eval()


def variants(ours: Any, theirs: Any, rows: int) -> dict[str, Callable[[dict[str, Any]], Any]]:
    mixed = [NAMES[i % len(NAMES)] for i in range(rows)]

    def lorakit_single(inputs: dict[str, Any]) -> Any:
        lorakit.set_adapters(ours, [NAMES[0]])
        return ours(**inputs)

    def lorakit_mixed(inputs: dict[str, Any]) -> Any:
        with lorakit.row_adapters(ours, mixed):
            return ours(**inputs)

    def lorakit_rows_same(inputs: dict[str, Any]) -> Any:
        with lorakit.row_adapters(ours, [NAMES[0]] * rows):
            return ours(**inputs)

    def peft_single(inputs: dict[str, Any]) -> Any:
        theirs.set_adapter(NAMES[0])
        return theirs(**inputs)

    def peft_mixed(inputs: dict[str, Any]) -> Any:
        return theirs(**inputs, adapter_names=mixed)

    return {
        "lorakit, one adapter (usual path)": lorakit_single,
        "lorakit row_adapters, 4 adapters mixed": lorakit_mixed,
        "lorakit row_adapters, all rows one adapter": lorakit_rows_same,
        "peft, one adapter": peft_single,
        "peft adapter_names, 4 adapters mixed": peft_mixed,
    }


def time_variants(runs: dict[str, Callable[[dict[str, Any]], Any]], make_inputs: Callable[[str], dict[str, Any]],
                  iters: int, warmup: dict[str, Any] | None = None) -> dict[str, float]:  # fmt: skip
    """Best seconds per call (the least disturbed by other processes on a shared machine); a first round (on
    ``warmup`` inputs if given) warms kernels and builds stacks."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for step in range(iters + 1):
            for name, run in runs.items():
                inputs = warmup if step == 0 and warmup is not None else make_inputs(name)
                start = time.perf_counter()
                run(inputs)
                if step > 0:
                    times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--decode-batch", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = build_models(Path(tmp))
    gen = torch.Generator().manual_seed(0)
    vocab = ours.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=gen)  # (B, T)
    # logits_to_keep=1: a server's prefill needs the last position's logits only (as lorakit serve asks).
    warm = {"input_ids": ids[:, :8], "logits_to_keep": 1}
    prefill = time_variants(variants(ours, theirs, args.batch), lambda _: {"input_ids": ids, "logits_to_keep": 1},
                            args.iters, warm)  # fmt: skip

    # Decode: one new token per row on top of a seq-token cache made once per model; crop it back after each step.
    dec_ids = torch.randint(0, vocab, (args.decode_batch, args.seq), generator=gen)  # (B, T)
    caches = {}
    with torch.no_grad():
        for key, model in (("lorakit", ours), ("peft", theirs)):
            out = model(input_ids=dec_ids, use_cache=True, logits_to_keep=1)
            caches[key] = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
    step_ids = torch.randint(0, vocab, (args.decode_batch, 1), generator=gen)  # (B, 1)
    mask = torch.ones(args.decode_batch, args.seq + 1, dtype=torch.long)  # (B, T + 1)

    def decode_inputs(name: str) -> dict[str, Any]:
        cache = caches["peft" if name.startswith("peft") else "lorakit"]
        if cache.get_seq_length() > args.seq:
            cache.crop(args.seq - cache.get_seq_length())
        return {"input_ids": step_ids, "attention_mask": mask, CACHE_KWARG: cache, "use_cache": True}

    decode = time_variants(variants(ours, theirs, args.decode_batch), decode_inputs, args.iters * 3)

    columns = ["shape", "variant", "ms/forward", "tokens/s", "vs lorakit one adapter"]
    rows: list[list[Any]] = []
    for shape, results, tokens in (
        (f"prefill {args.batch} x {args.seq}", prefill, args.batch * args.seq),
        (f"decode {args.decode_batch} rows, {args.seq} cached", decode, args.decode_batch),
    ):
        single = results["lorakit, one adapter (usual path)"]
        for name, seconds in results.items():
            rows.append([shape, name, f"{seconds * 1000:.1f}", f"{tokens / seconds:.0f}", f"{single / seconds:.2f}x"])
    print_table(columns, rows)
    notes = ("SmolLM2-135M fp32, four r=16 all-linear adapters with random weights, forward only under no_grad, "
             f"best of {args.iters} (prefill, last-position logits) / {args.iters * 3} (decode) alternating rounds. "
             "'vs lorakit one "
             "adapter' is throughput relative to the usual single-adapter path (>1 is faster). Mixed rows cycle "
             "a0..a3; peft's mixed batch uses its adapter_names argument.")  # fmt: skip
    path = write_result("mixed_adapters", "Mixed-adapter batches: 4 adapters in one batch vs one adapter, and peft",
                        columns, rows, notes)  # fmt: skip
    print(f"written to {path}")


if __name__ == "__main__":
    main()
