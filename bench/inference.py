"""Inference forward latency: base model vs lorakit unmerged vs merged (and peft unmerged); adapter load time.

    python -m bench.inference [--repeats 7] [--quick]

One process holds four copies of the model (fp32, as loaded) and times one no-grad forward of the batch (4 x
<= 256 tokens) on each in turn, round after round, so load on the machine hits them alike; medians. Adapter load
time: ``lorakit.load_adapter`` of a saved r=16 all-linear adapter onto a fresh copy of the base (median of 3).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, median, run_child, workload, write_result


def child(repeats: int, quick: bool) -> dict[str, Any]:
    import peft

    import lorakit

    base, batch = workload(quick)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    config = lorakit.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
    unmerged = lorakit.add_adapter(copy.deepcopy(base), config)
    with torch.no_grad():  # a trained adapter: B is not zero
        for name, param in unmerged.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    merged = copy.deepcopy(unmerged)
    lorakit.merge_adapters(merged)
    peft_lora = peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = peft.get_peft_model(copy.deepcopy(base), peft_lora)
    models = {"base model": base, "lorakit unmerged": unmerged, "lorakit merged": merged,
              "peft unmerged": peft_model}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for m in models.values():
            m.eval()
            m(**inputs)  # warm-up
        for _ in range(repeats):
            for name, m in models.items():
                start = time.perf_counter()
                m(**inputs)
                times[name].append(time.perf_counter() - start)
    loads = []
    with tempfile.TemporaryDirectory() as folder:
        lorakit.save_adapter(unmerged, folder)
        for _ in range(3):
            fresh = copy.deepcopy(base)
            start = time.perf_counter()
            lorakit.load_adapter(fresh, folder)
            loads.append(time.perf_counter() - start)
    return {"times": times, "load": loads, "tokens": int(batch["attention_mask"].sum())}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.repeats, args.quick)))
        return args.out
    result = run_child("bench.inference", ["--child", "--repeats", str(args.repeats), *(["--quick"] * args.quick)])
    medians = {name: median(values) for name, values in result["times"].items()}
    base = medians["base model"]
    rows: list[list[Any]] = [[name, round(1000 * sec, 1), f"{sec / base:.3f}x"] for name, sec in medians.items()]
    rows.append(["lorakit.load_adapter (r=16, all-linear)", round(1000 * median(result["load"]), 1), "-"])
    model = "a tiny random Llama (--quick)" if args.quick else "SmolLM2-135M-Instruct (fp32)"
    notes = (
        f"{model}, one no-grad forward of 4 examples ({result['tokens']} tokens); medians of {args.repeats} "
        "rounds, the models alternating within each round. Targets: merged within +-3% of base, unmerged <= 1.10x."
    )
    command = f"python -m bench.inference --repeats {args.repeats}" + (" --quick" if args.quick else "")
    return write_result("inference", "Inference forward latency and adapter load time", command,
                        ["model", "ms", "vs base"], rows, notes, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
