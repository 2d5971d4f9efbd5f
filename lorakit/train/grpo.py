"""GRPO (Shao et al. 2024, DeepSeekMath) written with the trainer's primitives: sample, score, forward_backward,
optim_step.

Each prompt gets a group of G completions sampled from the live adapter (``Trainer.sample``); each completion i of a
group gets the weighted sum of its rewards r_i, and the advantage ``A_i = (r_i - mean(r)) / (std(r) + 1e-4)`` over
its group (``scale_rewards="group"``, Bessel-corrected std as TRL; ``"batch"``: the std of the whole batch; ``"none"``:
no division). A completion no reward scores (all None) gets A = 0, and a group whose rewards are all equal teaches
nothing: A = 0 for each. Per completion token t, with the ratio ``rho_t = pi(y_t) / pi_old(y_t)`` (``pi_old``: the
log-probabilities the sampler recorded), the loss is

    l_t = -min(rho_t A, clip(rho_t, 1 - epsilon, 1 + epsilon) A) + beta * (exp(q_t) - q_t - 1)
    q_t = log pi_ref(y_t) - log pi(y_t)

(the KL estimator k3 of Schulman 2020 to the reference, which is the model with the adapter disabled or the frozen
adapter being continued: ``lorakit.train.reference``), summed over all completion tokens of the batch and divided by
their number over all ranks: TRL's default ``loss_type="dapo"``, which has no length bias. One optimiser step per
batch of samples (TRL's ``num_iterations=1``): rho is 1 up to the rounding between the sampler's cached decoding and
the training forward, and the clip matters only when that differs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lorakit.data.batching import batch_order
from lorakit.data.prompts import PromptRecord
from lorakit.memory import peak_rss_mb
from lorakit.train.reference import reference_adapter
from lorakit.train.rewards import Reward, score
from lorakit.train.sampling import Completion, completion_batch


def group_advantages(rewards: torch.Tensor, n: int, scale: str = "group") -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages (N,), each group's reward spread is zero (N/n,)) for rewards (N,) in groups of ``n`` consecutive
    completions; nan rewards (unscored) are left out of their group's mean and std and get advantage 0."""
    grouped = rewards.view(-1, n)  # (groups, n)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)  # (groups, 1)
    std = _nanstd(grouped, dim=1)  # (groups,)
    advantages = (grouped - mean).view(-1)  # (N,)
    if scale == "group":
        advantages = advantages / (std.repeat_interleave(n) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (_nanstd(rewards.view(-1), dim=0) + 1e-4)
    elif scale != "none":
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale!r}")
    zero = torch.nan_to_num(std, nan=0.0) == 0  # a group of equal rewards (or of one scored completion)
    advantages = torch.where(zero.repeat_interleave(n), torch.zeros_like(advantages), advantages)
    return torch.nan_to_num(advantages, nan=0.0), zero


def _nanstd(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Standard deviation with Bessel's correction over the non-nan entries (nan where there are fewer than 2)."""
    count = (~t.isnan()).sum(dim)
    var = torch.nansum((t - torch.nanmean(t, dim=dim, keepdim=True)) ** 2, dim=dim) / (count - 1).clamp(min=1)
    return torch.where(count > 1, var.sqrt(), torch.full_like(var, float("nan")))


class ClippedRatioLoss:
    """``forward_backward``'s GRPO loss for ``completion_batch`` rows carrying ``advantages`` (B,) and, when
    ``beta`` > 0, ``ref_log_probs`` (B, T): this slice's share of the batch's token mean (``total_tokens``: the
    completion tokens over all ranks). Also returns the shares of ``kl`` (mean per token) and ``clipped`` (share of
    tokens whose ratio was clipped)."""

    def __init__(self, epsilon: float, beta: float, total_tokens: float) -> None:
        self.epsilon, self.beta, self.total = epsilon, beta, max(total_tokens, 1.0)

    def __call__(self, log_probs: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        device = log_probs.device
        labels = batch["labels"].to(device)
        mask = torch.zeros_like(labels, dtype=torch.bool)
        mask[:, 1:] = labels[:, 1:] != -100  # (B, T) the completion tokens
        old = batch["old_log_probs"].to(device, log_probs.dtype)
        advantages = batch["advantages"].to(device, log_probs.dtype)[:, None]  # (B, 1)
        ratio = torch.exp(log_probs - old)  # (B, T)
        clipped = torch.clamp(ratio, 1 - self.epsilon, 1 + self.epsilon)
        per_token = -torch.min(ratio * advantages, clipped * advantages)  # (B, T)
        # tokens where the clip is active (no gradient through the ratio), as TRL's clip_ratio/region_mean counts them
        active = ((ratio < 1 - self.epsilon) & (advantages < 0)) | ((ratio > 1 + self.epsilon) & (advantages > 0))
        extra = {"clipped": float((active & mask).sum()) / self.total}
        if self.beta > 0:
            q = batch["ref_log_probs"].to(device, log_probs.dtype) - log_probs
            kl = torch.exp(q) - q - 1  # (B, T), >= 0
            per_token = per_token + self.beta * kl
            extra["kl"] = float((kl.detach() * mask).sum()) / self.total
        return (per_token * mask).sum() / self.total, extra


def grpo_step(trainer: Any, records: Sequence[PromptRecord], rewards: Sequence[Reward]) -> dict[str, float]:
    """One GRPO optimiser step on this rank's prompts: ``num_generations`` samples of each, their rewards, the
    advantages, the reference pass (beta > 0), ``forward_backward`` with ``ClippedRatioLoss`` and ``optim_step``.
    Returns ``step``'s metrics, each reward's mean and std (``rewards/NAME/mean``, ``.../std``), the summed
    ``reward``'s, ``frac_reward_zero_std`` (share of groups whose rewards do not differ, which teach nothing),
    completion lengths (mean, min, max), ``kl`` (beta > 0), ``clipped``, and the seconds spent sampling, scoring
    and training. Every value is over all ranks."""
    c, procs = trainer.config, trainer.procs
    started = time.perf_counter()
    samples = trainer.sample([r.prompt for r in records], n=c.num_generations)
    sampled = time.perf_counter()
    per_reward = _scores(records, samples, rewards)  # (N, K), nan: not scored
    weights = torch.tensor([r.weight for r in rewards], dtype=torch.float64)
    unscored = per_reward.isnan().all(1)
    total = torch.where(unscored, torch.nan, torch.nansum(per_reward * weights, dim=1))  # (N,)
    advantages, zero = group_advantages(total, c.num_generations, c.scale_rewards)
    scored = time.perf_counter()
    batch = completion_batch(samples, trainer.tokenizer.pad_token_id)
    batch["advantages"] = advantages.float()
    if c.beta:
        batch["ref_log_probs"] = trainer.log_probs(batch, adapter=reference_adapter(trainer.model) or False)
    (tokens,) = procs.sum(sum(len(s.ids) for s in samples))
    done = trainer.forward_backward(batch, loss=ClippedRatioLoss(c.epsilon, float(c.beta), tokens))
    metrics = {**trainer.optim_step(), **done}
    lengths = [float(len(s.ids)) for s in samples]
    metrics.update(_spread("reward", total, procs))
    for k, r in enumerate(rewards):
        metrics.update(_spread(f"rewards/{r.name}", per_reward[:, k], procs))
    groups, zeros, n = procs.sum(len(zero), float(zero.sum()), len(lengths))
    low, high = _extremes(procs, min(lengths), max(lengths))
    metrics.update({"frac_reward_zero_std": zeros / groups, "completion_length": tokens / n,
                    "completion_length/min": low, "completion_length/max": high,
                    "seconds_sampling": sampled - started, "seconds_scoring": scored - sampled,
                    "seconds_training": time.perf_counter() - scored,
                    "seconds": time.perf_counter() - started})  # fmt: skip
    return metrics


def _scores(records: Sequence[PromptRecord], samples: Sequence[Completion], rewards: Sequence[Reward]) -> torch.Tensor:
    """(N, K) rewards of the samples (float64, nan for None), each reward called once with every completion."""
    rows = [records[s.prompt] for s in samples]
    prompts = [r.prompt for r in rows]
    chat = [bool(r.prompt) and isinstance(r.prompt[0], dict) for r in rows]  # a conversation, not text or ids
    completions = [[{"role": "assistant", "content": s.text}] if c else s.text
                   for c, s in zip(chat, samples, strict=True)]  # fmt: skip
    names = sorted({k for r in rows for k in r.columns} - {"prompts", "completions", "completion_ids", "reference"})
    columns: dict[str, list[Any]] = {k: [r.columns.get(k) for r in rows] for k in names}
    columns["reference"] = [r.reference for r in rows]
    values = [score(r, prompts, completions, [s.ids for s in samples], columns) for r in rewards]
    return torch.tensor(values, dtype=torch.float64).T.reshape(len(samples), len(rewards))


def _spread(name: str, values: torch.Tensor, procs: Any) -> dict[str, float]:
    """Mean and (population) std over all ranks of the non-nan ``values``."""
    kept = values[~values.isnan()]
    n, s, ss = procs.sum(float(kept.numel()), float(kept.sum()), float((kept**2).sum()))
    mean = s / n if n else math.nan
    return {f"{name}/mean": mean, f"{name}/std": math.sqrt(max(ss / n - mean**2, 0.0)) if n else math.nan}


def _extremes(procs: Any, low: float, high: float) -> tuple[float, float]:
    """The smallest ``low`` and the largest ``high`` over all ranks."""
    if procs.world == 1:
        return low, high
    import torch.distributed as dist

    t = torch.tensor([-low, high], dtype=torch.float64, device=procs.device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return -float(t[0]), float(t[1])


class PromptBatches:
    """Step ``m``'s prompts for this rank, from (seed, epoch) alone: global batches of ``batch_size * world /
    num_generations`` prompts of similar length (``batch_size`` counts completions per rank, as TRL's
    ``per_device_train_batch_size``), this rank's contiguous slice of each."""

    def __init__(self, records: Sequence[PromptRecord], trainer: Any) -> None:
        c = trainer.config
        self.records, self.procs, self.seed = list(records), trainer.procs, c.seed
        self.size = max(1, c.batch_size * trainer.procs.world // c.num_generations)
        self.lengths = [_size(r.prompt) for r in self.records]
        self.per_epoch = len(batch_order(self.lengths, self.size, self.seed, 0))

    def __getitem__(self, m: int) -> list[PromptRecord]:
        epoch, index = divmod(m, self.per_epoch)
        rows = batch_order(self.lengths, self.size, self.seed, epoch)[index]
        return [self.records[i] for i in self.procs.part(rows) or rows[:1]]


def _size(prompt: Any) -> int:
    """A prompt's length in characters (text, messages) or tokens (ids): what batches of similar prompts sort by."""
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(m["content"]) if isinstance(m, dict) else 1 for m in prompt)


def train_grpo(
    trainer: Any, records: Sequence[PromptRecord], rewards: Sequence[Reward], *,
    on_step: Callable[[Any, dict[str, float]], None] | None = None, progress: bool = True,
) -> list[dict[str, float]]:  # fmt: skip
    """GRPO from ``trainer.step_count`` to ``max_steps`` (or ``epochs`` passes over the prompts), calling
    ``on_step(trainer, metrics)`` after each step, with a progress bar showing the reward; returns the metrics."""
    from tqdm import tqdm

    batches, c = PromptBatches(records, trainer), trainer.config
    total = c.max_steps or max(1, math.ceil(c.epochs * batches.per_epoch))
    trainer.set_total_steps(total)
    history: list[dict[str, float]] = []
    bar = tqdm(total=total, initial=trainer.step_count, disable=not (progress and trainer.procs.is_main),
               unit="step", dynamic_ncols=True)  # fmt: skip
    while trainer.step_count < total:
        metrics = grpo_step(trainer, batches[trainer.step_count], rewards)
        metrics["peak_rss_mb"] = peak_rss_mb() or 0.0
        history.append(metrics)
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", zero_std=f"{metrics['frac_reward_zero_std']:.2f}",
                        length=f"{metrics['completion_length']:.0f}")  # fmt: skip
        bar.update(1)
        if on_step is not None:
            on_step(trainer, metrics)
    bar.close()
    return history
