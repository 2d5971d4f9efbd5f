"""One run of DPO steps and a sample with the trainer's primitives, alone or as one rank of ``torchrun`` (gloo):
tests/train/test_post_distributed.py runs it both ways and compares. Not a test module itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import lorakit
from lorakit.data.jsonl import validate_records
from lorakit.data.preference import tokenize_pairs
from lorakit.train.preference import PairBatches, preference_step

RECORDS = [
    {"prompt": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
     "chosen": [{"role": "assistant", "content": f"{2 * i}"}],
     "rejected": [{"role": "assistant", "content": f"{2 * i + 1}, I believe" + " really" * i}]}
    for i in range(8)
]  # fmt: skip


def main(model_dir: str, out: str, batch_size: int) -> None:
    if "RANK" in __import__("os").environ:
        dist.init_process_group("gloo")
    model, tokenizer = lorakit.load_model(model_dir)
    config = lorakit.TrainConfig(objective="dpo", precision="fp32", max_steps=2, r=4, lora_alpha=8, lr=0.01,
                                 warmup_steps=0, batch_size=batch_size, seed=0)  # fmt: skip
    trainer = lorakit.Trainer(model, tokenizer, config)
    pairs, _ = tokenize_pairs(tokenizer, validate_records(RECORDS), 256)
    batches = PairBatches(pairs, trainer)
    history = [preference_step(trainer, batches[m]) for m in range(2)]
    samples = trainer.sample([[{"role": "user", "content": "Say something."}]], n=2, max_new_tokens=5)
    forward = trainer.log_probs(__import__("lorakit.train.sampling", fromlist=["x"]).completion_batch(
        samples, tokenizer.pad_token_id))  # fmt: skip
    own = [s.ids for s in samples]
    gap = max(abs(float(forward[i, len(s.prompt_ids) + k]) - lp) for i, s in enumerate(samples)
              for k, lp in enumerate(s.log_probs))  # fmt: skip
    everyone: list = [own]
    if dist.is_initialized():
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, own)
    trainer.save(Path(out))
    if trainer.procs.is_main:
        result = {"history": history, "samples": everyone, "log_prob_gap": gap, "world": trainer.procs.world}
        (Path(out) / "result.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
