"""Greedy generation on the demo's held-out split: transformers' generate against lorakit's own loop.

    python -m bench.generate_speed --adapter runs/demo-... [--limit 200] [--rounds 2] [--batch-size 50]

What ``lorakit eval`` and the demo's evaluation do (``evaluate_contacts``: prompts sorted by length, batches of 50,
greedy, KV cache, the adapter merged, bf16 where the CPU runs it), once through ``model.generate`` as before and
once through ``lorakit.eval.generate.greedy_ids`` (the shared system prompt run once per batch, finished rows
dropped). Both paths alternate in one process, round after round (order reversed every other round); medians.
Without ``--adapter`` the base model answers, at length.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, median, write_result


def hf_generate(model: Any, tokenizer: Any, prompts: list[list[int]], new: int) -> list[str]:
    """The path ``generate_batch`` took for greedy decoding before ``greedy_ids``."""
    from lorakit.eval.generate import _left_pad

    inputs = _left_pad(prompts, tokenizer.pad_token_id)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new, pad_token_id=tokenizer.pad_token_id, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, top_k=None)  # fmt: skip
    return [tokenizer.decode(row, skip_special_tokens=True) for row in out[:, inputs["input_ids"].shape[1] :]]


def lorakit_greedy(model: Any, tokenizer: Any, prompts: list[list[int]], new: int) -> list[str]:
    from lorakit.eval.generate import generate_batch

    return generate_batch(model, tokenizer, prompts, new)


def main(argv: list[str] | None = None) -> Path:
    from lorakit.cli.common import model_with_adapter
    from lorakit.data.jsonl import read_jsonl
    from lorakit.eval.generate import prompt_ids
    from lorakit.tasks.contacts import builtin_path, reference_of
    from lorakit.tasks.contacts_metrics import score_all

    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", help="a trained adapter (the demo's); default: the base model")
    parser.add_argument("--limit", type=int, default=200, help="held-out examples (the demo scores 200)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    model, tokenizer = model_with_adapter(None, args.adapter, None, False)
    records = read_jsonl(str(builtin_path("eval")))[: args.limit]
    new = max(len(tokenizer(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) for r in records)
    new += 16  # as evaluate_contacts
    order = sorted(range(len(records)), key=lambda i: len(prompt_ids(tokenizer, records[i]["messages"])))
    prompts = [prompt_ids(tokenizer, records[i]["messages"]) for i in order]
    references = [reference_of(records[i]) for i in order]
    paths = {"transformers generate": hf_generate, "lorakit greedy loop": lorakit_greedy}
    times: dict[str, list[float]] = {name: [] for name in paths}
    replies: dict[str, list[str]] = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name in list(paths) if round_ % 2 == 0 else list(paths)[::-1]:
            start = time.perf_counter()
            out = [r for s in range(0, len(prompts), args.batch_size)
                   for r in paths[name](model, tokenizer, prompts[s : s + args.batch_size], new)]  # fmt: skip
            if round_ > 0:
                times[name].append(time.perf_counter() - start)
            replies[name] = out
        print(f"round {round_}: " + ", ".join(f"{n} {t[-1]:.1f} s" for n, t in times.items() if t), flush=True)
    ref = median(times["transformers generate"])
    same = sum(a == b for a, b in zip(*replies.values(), strict=True))
    rows = []
    for name, t in times.items():
        scores = score_all(replies[name], references)
        rows.append([name, round(median(t), 2), round(len(prompts) / median(t), 2), f"{ref / median(t):.2f}x",
                     round(scores["exact_match"], 3), round(scores["json_valid"], 3)])  # fmt: skip
    who = f"the adapter {args.adapter}" if args.adapter else "the base model"
    notes = (
        f"{len(prompts)} held-out contacts messages, {who}, greedy, up to {new} new tokens, batches of "
        f"{args.batch_size} by prompt length, {next(model.parameters()).dtype} weights; {args.rounds} timed "
        f"round(s) after a warm-up round, the two paths alternating in one process; medians. Identical replies: "
        f"{same} of {len(prompts)}."
    )
    command = f"python -m bench.generate_speed --adapter ADAPTER --limit {args.limit} --rounds {args.rounds}"
    columns = ["path", "seconds", "examples/s", "speed vs transformers generate", "exact_match", "json_valid"]
    return write_result("generate_speed", "Greedy generation on the demo's held-out split", command, columns, rows,
                        notes, args.out)  # fmt: skip


if __name__ == "__main__":
    print(main())
