"""A GRPO loop written with the trainer's three primitives (docs/library.md "Reward learning").

    python examples/grpo_loop.py --steps 20 --adapter runs/sft --output my-grpo-adapter

The built-in contacts task: each prompt asks for a JSON object of five details, the reward is the share of them the
completion gets right (the task's own scorer). Sampling, scoring, the advantage and the clipped-ratio loss are
spelled out here; ``lorakit.train.grpo.train_grpo`` is the same loop with the metrics, the KL term and rewards by
name. Starting from a supervised adapter (``--adapter``) is the usual case: the base model alone rarely writes JSON.
"""

from __future__ import annotations

import argparse
import json

import torch

import lorakit
from lorakit.tasks.contacts import load
from lorakit.tasks.contacts_metrics import score_reply
from lorakit.train.sampling import completion_batch


def clipped_ratio_loss(log_probs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """GRPO's loss over a batch's completion tokens: -min(rho A, clip(rho, 0.8, 1.2) A), rho = pi / pi_old."""
    mask = batch["labels"] != -100  # (B, T): the completion tokens
    ratio = torch.exp(log_probs - batch["old_log_probs"])  # 1 up to rounding: one step per batch of samples
    a = batch["advantages"][:, None].to(log_probs)  # (B, 1)
    per_token = -torch.min(ratio * a, ratio.clamp(0.8, 1.2) * a)
    return (per_token * mask).sum() / mask.sum()  # a token mean over the batch (TRL's "dapo"; one process)


def main(argv: list[str] | None = None) -> list[float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="a transformers folder (default: the built-in model)")
    p.add_argument("--adapter", default=None, help="an adapter to continue (e.g. a short SFT run's folder)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--generations", type=int, default=4, help="completions per prompt (the group)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--output", default="my-grpo-adapter")
    args = p.parse_args(argv)

    model, tokenizer = lorakit.load_model(args.model)
    if args.adapter:
        lorakit.load_adapter(model, args.adapter, trainable=True)
    config = lorakit.TrainConfig(max_steps=args.steps, lr=2e-5 if args.adapter else 1e-4, warmup_steps=0, r=16,
                                 lora_alpha=32, max_completion_length=args.max_new_tokens, temperature=1.0)  # fmt: skip
    trainer = lorakit.Trainer(model, tokenizer, config)
    records, g, mean_rewards = load("train"), args.generations, []
    for step in range(args.steps):
        chunk = [records[(step * args.prompts + i) % len(records)] for i in range(args.prompts)]
        samples = trainer.sample([r["messages"][:-1] for r in chunk], n=g)  # the live adapter, KV-cached
        answers = [json.loads(r["messages"][-1]["content"]) for r in chunk]
        rewards = torch.tensor([score_reply(s.text, answers[s.prompt])["field_accuracy"] for s in samples])
        grouped = rewards.view(-1, g)  # (prompts, g): each prompt's completions
        advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
        batch = completion_batch(samples, tokenizer.pad_token_id)  # prompt + completion rows, old log-probs
        batch["advantages"] = advantages
        trainer.forward_backward(batch, loss=clipped_ratio_loss)
        trainer.optim_step()
        mean_rewards.append(float(rewards.mean()))
        length = sum(len(s.ids) for s in samples) / len(samples)
        print(f"step {step + 1}: mean reward {mean_rewards[-1]:.3f}, completions of {length:.0f} tokens")
    lorakit.save_adapter(trainer.model, args.output)
    return mean_rewards


if __name__ == "__main__":
    main()
