"""Optimiser and learning-rate schedule.

AdamW over the trainable parameters; with LoRA+ (Hayou et al. 2024) the B matrices get ``ratio x lr``, which
speeds up learning at the same stability. No weight decay on biases.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lorakit.train.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    groups: dict[str, list[nn.Parameter]] = {"a": [], "b": [], "bias": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith("bias"):
            groups["bias"].append(param)
        elif ".lora_B." in name or ".lora_embedding_B." in name:
            groups["b"].append(param)
        else:
            groups["a"].append(param)
    lr = float(config.lr or 0.0)  # resolved to the method's default by TrainConfig
    param_groups = [
        {"params": groups["a"], "lr": lr, "weight_decay": config.weight_decay},
        {"params": groups["b"], "lr": lr * config.loraplus_lr_ratio, "weight_decay": config.weight_decay},
        {"params": groups["bias"], "lr": lr, "weight_decay": 0.0},
    ]
    param_groups = [g for g in param_groups if g["params"]]
    if not param_groups:
        raise ValueError("the model has no trainable parameters")
    # foreach=None: torch's choice, the per-tensor loop on a CPU (where the multi-tensor path buys nothing for a few
    # hundred small adapter tensors) and the multi-tensor kernels on a GPU (one launch per op, not one per tensor)
    return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=None)


def schedule(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at a step: linear warm-up, then cosine / linear decay to 0, or constant."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.lr_schedule == "constant" or total_steps <= warmup:
            return 1.0
        progress = (step - warmup) / max(total_steps - warmup, 1)
        if config.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
