"""DPO (and IPO) on preference pairs, written with the trainer's primitives.

For a prompt x with a chosen reply y_w and a rejected one y_l, the policy pi (the model with the trained adapter)
and the reference pi_ref (the same model with the adapter disabled, or the frozen adapter being continued:
``lorakit.train.reference``), each reply's implicit reward is ``r(y) = beta * (log pi(y|x) - log pi_ref(y|x))``
with log-probabilities summed over the reply's label tokens. Per pair, with ``d = r(y_w)/beta - r(y_l)/beta``:

- ``sigmoid`` (DPO, Rafailov et al. 2023): ``-log sigmoid(beta * d)``;
- ``ipo`` (Azar et al. 2023): ``(d_w/|y_w| - d_l/|y_l| - 1/(2 beta))^2``, each log-ratio divided by its reply's
  token count, as TRL does (the IPO authors confirmed this normalisation to TRL; the paper writes whole-sequence
  log-ratios).

The loss of a batch is the mean over its pairs (over all ranks in a process group). The reference pass runs once
per batch, under no_grad, before the policy's forward and backward: no second model is held. The step's metrics, as
TRL names them: ``rewards/chosen`` and ``rewards/rejected`` (mean implicit rewards), ``rewards/margins`` (their mean
difference) and ``rewards/accuracies`` (share of pairs whose chosen reward is higher).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lorakit.data.batching import batch_order
from lorakit.data.preference import PreferencePair, collate_pairs
from lorakit.data.tokenize import IGNORE_INDEX
from lorakit.memory import peak_rss_mb
from lorakit.train.reference import reference_adapter

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def sequence_log_probs(log_probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of each row's label-token log-probabilities (R,), and the rows' label-token counts (R,), from the
    per-token log-probabilities (R, T) ``forward_backward`` gives (0 off the labels)."""
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(1)  # (R,)
    return log_probs.sum(1), counts


def pair_losses(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
    beta: float, loss_type: str, chosen_tokens: torch.Tensor | None = None, rejected_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(per-pair loss, chosen rewards, rejected rewards), each (P,), from the summed log-probabilities (P,) of the
    policy and the reference; IPO also needs each reply's token count."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected  # (P,)
    if loss_type == "sigmoid":
        loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs the replies' token counts")
        per_token = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        loss = (per_token - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be sigmoid or ipo, got {loss_type!r}")
    return loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


class PreferenceLoss:
    """``forward_backward``'s loss for a batch of pairs (``collate_pairs``: P chosen rows, then P rejected), given
    the batch's reference log-probabilities and the number of pairs over all ranks: each value is this slice's share
    of the whole batch's mean."""

    def __init__(self, reference: torch.Tensor, beta: float, loss_type: str, total_pairs: float) -> None:
        self.reference, self.beta, self.loss_type, self.total = reference, beta, loss_type, total_pairs

    def __call__(self, log_probs: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        labels = batch["labels"].to(log_probs.device)
        policy, counts = sequence_log_probs(log_probs, labels)
        reference, _ = sequence_log_probs(self.reference.to(log_probs.device), labels)
        p = policy.shape[0] // 2
        loss, chosen, rejected = pair_losses(policy[:p], policy[p:], reference[:p], reference[p:], self.beta,
                                             self.loss_type, counts[:p], counts[p:])  # fmt: skip
        real = (counts[:p] > 0) & (counts[p:] > 0)  # (P,): a rank left without pairs runs one with no labels
        share = 1.0 / max(self.total, 1.0)
        metrics = {"rewards/chosen": float(chosen[real].sum()) * share,
                   "rewards/rejected": float(rejected[real].sum()) * share,
                   "rewards/margins": float((chosen - rejected)[real].sum()) * share,
                   "rewards/accuracies": float((chosen > rejected)[real].sum()) * share}  # fmt: skip
        return (loss * real).sum() * share, metrics


def preference_step(trainer: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """One DPO/IPO optimiser step on a batch of pairs (this rank's slice in a process group): the reference pass,
    then ``forward_backward`` with ``PreferenceLoss``, then ``optim_step``. ``trainer``: a ``lorakit.Trainer``
    whose config gives ``beta`` and ``loss_type``. Returns the step's metrics (``step``'s and ``METRICS``)."""
    started = time.perf_counter()
    c = trainer.config
    reference = trainer.log_probs(batch, adapter=reference_adapter(trainer.model) or False)  # (2P, T), no_grad
    p = batch["input_ids"].shape[0] // 2
    labelled = (batch["labels"][:, 1:] != IGNORE_INDEX).any(1)  # (2P,)
    (pairs,) = trainer.procs.sum(int((labelled[:p] & labelled[p:]).sum()))  # pairs over all ranks
    done = trainer.forward_backward(batch, loss=PreferenceLoss(reference, float(c.beta), c.loss_type, pairs))
    return {**trainer.optim_step(), **done, "seconds": time.perf_counter() - started}


class PairBatches:
    """Batch ``m`` of a run over pairs, from (seed, epoch) alone as ``lorakit.train.batches.MicroBatches``: global
    batches of ``batch_size`` pairs of similar length, this rank's slice of each."""

    def __init__(self, pairs: Sequence[PreferencePair], trainer: Any) -> None:
        c = trainer.config
        self.pairs, self.procs, self.pad = list(pairs), trainer.procs, trainer.tokenizer.pad_token_id
        self.seed, self.size, self.multiple = c.seed, c.batch_size * trainer.procs.world, c.pad_to_multiple_of
        self.per_epoch = len(self.order(0))

    def order(self, epoch: int) -> list[list[int]]:
        return batch_order([p.length for p in self.pairs], self.size, self.seed, epoch)

    def __getitem__(self, m: int) -> dict[str, torch.Tensor]:
        epoch, index = divmod(m, self.per_epoch)
        rows = self.order(epoch)[index]
        mine = self.procs.part(rows) or rows[:1]  # a rank left nothing still joins the all-reduce (a zero-weight pair)
        batch = collate_pairs([self.pairs[i] for i in mine], self.pad, self.multiple)
        if not self.procs.part(rows):
            batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
        return batch


def train_preferences(
    trainer: Any, pairs: Sequence[PreferencePair], *,
    on_step: Callable[[Any, dict[str, float]], None] | None = None, progress: bool = True,
) -> list[dict[str, float]]:  # fmt: skip
    """Train ``trainer`` with DPO/IPO over ``pairs`` from its ``step_count`` to ``max_steps`` (or ``epochs`` passes),
    calling ``on_step(trainer, metrics)`` after each step; returns every step's metrics."""
    batches = PairBatches(pairs, trainer)
    c = trainer.config
    total = c.max_steps or max(1, math.ceil(c.epochs * batches.per_epoch))
    trainer.set_total_steps(total)
    history: list[dict[str, float]] = []
    bar = tqdm(total=total, initial=trainer.step_count, disable=not (progress and trainer.procs.is_main),
               unit="step", dynamic_ncols=True)  # fmt: skip
    while trainer.step_count < total:
        metrics = preference_step(trainer, batches[trainer.step_count])
        metrics["peak_rss_mb"] = peak_rss_mb() or 0.0
        history.append(metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracies']:.2f}",
                        margin=f"{metrics['rewards/margins']:.3f}")  # fmt: skip
        bar.update(1)
        if on_step is not None:
            on_step(trainer, metrics)
    bar.close()
    return history
