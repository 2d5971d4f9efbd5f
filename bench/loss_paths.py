"""Training-step time of the three loss paths on the built-in model, side by side in one run.

    .venv/bin/python -m bench.loss_paths [--steps 6] [--batch-size 8] [--precision bf16|fp32]

(a) transformers' own forward (logits at every position), (b) lorakit's head on label positions only,
(c) (b) plus the shared system-prompt prefix run once per batch. Each is a full LoRA training step (forward,
backward, AdamW) on the same batches; the paths alternate step by step so machine noise hits them alike.
Prints medians and ratios against (a).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import lorakit
from lorakit.data.batching import batch_order, collate
from lorakit.data.jsonl import read_jsonl
from lorakit.data.tokenize import tokenize_dataset
from lorakit.loss import label_count, token_loss_sum
from lorakit.tasks.contacts import builtin_path


def full_logits_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), reduction="sum")


PATHS = {
    "a: full logits (transformers forward)": full_logits_loss,
    "b: head on label positions": lambda m, b: token_loss_sum(m, b, share_prefix=False),
    "c: b + shared prompt prefix": lambda m, b: token_loss_sum(m, b, share_prefix=True),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = lorakit.load_model()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    examples, _ = tokenize_dataset(tokenizer, read_jsonl(builtin_path("train")), 384)
    order = batch_order([len(e.input_ids) for e in examples], args.batch_size, 0, 0)
    batches = [collate([examples[i] for i in order[k]], tokenizer.pad_token_id) for k in range(args.steps + 1)]
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    times: dict[str, list[float]] = {name: [] for name in PATHS}
    for step, batch in enumerate(batches):
        for name, loss_fn in PATHS.items():
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model, batch)
            (loss / label_count(batch)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step > 0:  # the first batch warms up oneDNN kernels
                times[name].append(time.perf_counter() - start)
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches[1:])
    base = statistics.median(times[next(iter(PATHS))])
    print(f"LoRA r=16 all-linear on SmolLM2-135M, batch {args.batch_size} (~{tokens:.0f} tokens), "
          f"{args.precision}, {torch.get_num_threads()} threads, {args.steps} steps each, medians")  # fmt: skip
    print("| path | s/step | tokens/s | speed-up vs a |\n|---|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {tokens / med:.0f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
