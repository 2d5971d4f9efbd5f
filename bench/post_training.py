"""Post-training's two costs on the built-in model: sampling, and the reference model of DPO.

    python -m bench.post_training [--rounds 3] [--prompts 8] [--n 4] [--new 64]

1. Sampling: ``Trainer.sample`` (lorakit's decoding loop: each prompt's prefill once for its n samples, the shared
   system prompt once for all, finished rows leaving the batch, log-probabilities recorded) against transformers'
   ``generate(do_sample=True, num_return_sequences=n)``, alone and followed by the forward pass over prompt +
   completion that a trainer using ``generate`` needs for the log-probabilities (TRL's ``old_per_token_logps``).
   Same model, adapter, precision and attention kernels; the two alternate round after round; medians of tokens/s.
2. DPO's reference: peak RSS (VmHWM) of a process that loads the model, adds an adapter and runs DPO steps with
   the reference computed by disabling the adapter (lorakit), against one that holds a second frozen copy of the base
   as the reference (TRL's ``ref_model=``), each in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import torch


def _contacts_prompts(k: int) -> list[list[dict[str, str]]]:
    from lorakit.tasks.contacts import load

    return [r["messages"][:-1] for r in load("eval")[:k]]


def _hf_sample(trainer: Any, prompts: list[list[dict[str, str]]], n: int, new: int, logps: bool) -> int:
    """transformers' generate on the trainer's model (and then a log-prob forward pass); returns tokens generated."""
    from lorakit.eval.generate import _left_pad
    from lorakit.train.sampling import Completion, completion_batch, prompt_ids

    tok = trainer.tokenizer
    ids = [prompt_ids(tok, p) for p in prompts]
    inputs = _left_pad(ids, tok.pad_token_id)
    with trainer._inference(True):
        out = trainer.model.generate(**inputs, do_sample=True, temperature=1.0, top_k=None, top_p=1.0,
                                     num_return_sequences=n, max_new_tokens=new, pad_token_id=tok.pad_token_id,
                                     eos_token_id=tok.eos_token_id)  # fmt: skip
    rows = []
    for i, row in enumerate(out[:, inputs["input_ids"].shape[1] :].tolist()):
        row = row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row
        rows.append(Completion(i // n, ids[i // n], row, [0.0] * len(row), "", True))
    if logps:
        trainer.log_probs(completion_batch(rows, tok.pad_token_id))
    return sum(len(r.ids) for r in rows)


def sampling(rounds: int, k: int, n: int, new: int) -> list[tuple[str, float, float]]:
    import lorakit

    model, tokenizer = lorakit.load_model()
    trainer = lorakit.Trainer(model, tokenizer, lorakit.TrainConfig(max_steps=1, r=16, lora_alpha=32))
    prompts = _contacts_prompts(k)
    paths = {
        "transformers generate": lambda: _hf_sample(trainer, prompts, n, new, logps=False),
        "transformers generate + log-prob forward": lambda: _hf_sample(trainer, prompts, n, new, logps=True),
        "Trainer.sample (log-probs included)": lambda: sum(len(s.ids) for s in trainer.sample(prompts, n=n,
                                                                                              max_new_tokens=new)),
    }  # fmt: skip
    speeds: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(rounds):
        for name in list(paths)[:: 1 if r % 2 == 0 else -1]:
            started = time.perf_counter()
            tokens = paths[name]()
            speeds[name].append(tokens / (time.perf_counter() - started))
    base = sorted(speeds["transformers generate + log-prob forward"])[rounds // 2]
    return [(name, sorted(v)[rounds // 2], sorted(v)[rounds // 2] / base) for name, v in speeds.items()]


def memory_variant(variant: str, steps: int = 2) -> dict[str, float]:
    """One process: load, adapter, DPO steps; the reference by disabling the adapter or from a second base copy."""
    import lorakit
    from lorakit.data.jsonl import validate_records
    from lorakit.data.preference import collate_pairs, tokenize_pairs
    from lorakit.loss import autocast, token_log_probs
    from lorakit.memory import peak_rss_mb
    from lorakit.tasks.contacts import load
    from lorakit.train.preference import PreferenceLoss

    model, tokenizer = lorakit.load_model()
    trainer = lorakit.Trainer(model, tokenizer, lorakit.TrainConfig(objective="dpo", max_steps=steps, r=16))
    copy = None
    if variant == "copy":
        copy = lorakit.load_model(dtype=torch.bfloat16 if trainer.autocast is not None else None)[0]
        copy.requires_grad_(False)
    loaded = peak_rss_mb() or 0.0
    records = []
    for r in load("train")[:8]:
        reply = r["messages"][-1]["content"]
        records.append({"prompt": r["messages"][:-1], "chosen": reply, "rejected": reply.replace('"', "'")})
    pairs, _ = tokenize_pairs(tokenizer, validate_records(records), 1024)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    started = time.perf_counter()
    for _ in range(steps):
        if copy is None:
            reference = trainer.log_probs(batch, adapter=False)
        else:
            with torch.no_grad(), autocast(trainer.autocast, trainer.device):
                reference = token_log_probs(copy, batch)
        trainer.forward_backward(batch, loss=PreferenceLoss(reference, 0.1, "sigmoid", len(pairs)))
        trainer.optim_step()
    seconds = (time.perf_counter() - started) / steps
    return {"loaded_mb": loaded, "peak_mb": peak_rss_mb() or 0.0, "seconds_per_step": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--memory-variant", choices=("same", "copy"), help=argparse.SUPPRESS)  # one child process
    parser.add_argument("--skip-sampling", action="store_true")
    args = parser.parse_args(argv)
    if args.memory_variant:
        print(json.dumps(memory_variant(args.memory_variant)))
        return
    torch.set_num_threads(torch.get_num_threads())
    if not args.skip_sampling:
        print(f"sampling {args.prompts} contacts prompts x {args.n} completions, up to {args.new} new tokens, "
              f"built-in model, {args.rounds} rounds (medians)")  # fmt: skip
        print("| path | tokens/s | ratio |\n|---|---|---|")
        for name, speed, ratio in sampling(args.rounds, args.prompts, args.n, args.new):
            print(f"| {name} | {speed:.1f} | {ratio:.2f} |")
    print("\nDPO reference, 8 pairs per step, 2 steps, each variant in a fresh process (peak RSS = VmHWM)")
    print("| reference | RSS after loading, MB | peak RSS, MB | s/step |\n|---|---|---|---|")
    for variant, label in (("same", "adapter disabled (lorakit)"), ("copy", "second frozen copy of the base")):
        out = subprocess.run([sys.executable, "-m", "bench.post_training", "--memory-variant", variant],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        m = json.loads(out.strip().splitlines()[-1])
        print(f"| {label} | {m['loaded_mb']:.0f} | {m['peak_mb']:.0f} | {m['seconds_per_step']:.1f} |")


if __name__ == "__main__":
    main()
