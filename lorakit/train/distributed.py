"""Several processes, one run: DDP or FSDP2 over a process group someone else started, and each rank's slice.

The trainer never starts a process group: it joins the one that exists (``torchrun`` through ``lorakit train``,
which starts it in the CLI layer, or a distributed engine such as Ray Train), or trains alone when there is none.
``torchrun --nproc_per_node N -m lorakit train ...`` starts N copies of the same run. Each reads the whole
dataset and builds the same global micro-batches (seed, order) that one process with ``N x --batch-size``
would; rank k trains on its contiguous slice of each. The loss of a step is the sum over ALL label tokens of
all ranks divided by their global count (one all-reduce of the count), so the result does not depend on how
tokens fall across ranks: the gradients equal those of the single process up to float rounding.

Gradients are summed (not averaged) across ranks, since each rank's loss is already divided by the global
token count. DDP: a communication hook all-reduces each gradient bucket with SUM and counts its bytes. FSDP2
(``--fsdp``): the frozen base weights are sharded, decoder layer by decoder layer, and the reduce-scatter
divide factor is 1. Only trainable (adapter) parameters have gradients, so only they are communicated.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from lorakit.data.batching import collate
from lorakit.data.tokenize import TokenizedExample
from lorakit.errors import LorakitError
from lorakit.loss import IGNORE_INDEX, token_log_probs, token_loss_sum
from lorakit.models import decoder_layers, needs_loss_scaling

T = TypeVar("T")


INNER = "model."  # a parameter's name in LossModule = INNER + its name in the model


class LossModule(nn.Module):
    """``forward(batch)`` = the batch's label-token loss sum (``log_probs=True``: its per-token log-probabilities,
    ``lorakit.loss.token_log_probs``); the one module DDP or FSDP2 wraps.

    Wrapping the loss rather than the causal LM lets ``token_loss_sum`` call the decoder and the head directly
    (its shared-prefix path) while every forward still passes through the wrapper's hooks.
    """

    def __init__(self, model: nn.Module, share_prefix: bool = True) -> None:
        super().__init__()
        self.model, self.share_prefix = model, share_prefix

    def forward(self, batch: dict[str, torch.Tensor], log_probs: bool = False) -> torch.Tensor:
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        if log_probs:
            return token_log_probs(self.model, batch, share_prefix=self.share_prefix)
        return token_loss_sum(self.model, batch, share_prefix=self.share_prefix)


@dataclass
class Processes:
    """This process's place in the run. A plain run is ``Processes()``: rank 0 of 1, every helper a no-op."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    fsdp: bool = False
    bytes_reduced: int = 0
    """Gradient bytes this rank has handed to all-reduce so far (counted by the DDP hook)."""
    backend: str = "none"
    """The process group's backend ("gloo", "nccl"), or "none" alone."""

    @classmethod
    def join(cls, fsdp: bool = False) -> Processes:
        """This process's place in the process group that exists (one started by torchrun or a distributed engine);
        a plain single-process run when there is none or it has one process. Never starts a group."""
        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return cls()
        backend = str(dist.get_backend())
        # The device of this rank: torchrun and Ray Train say it in LOCAL_RANK; an engine that does not has set
        # the current CUDA device itself (NCCL needs one), and gloo runs on the CPU.
        if "LOCAL_RANK" in os.environ:
            local_rank = int(os.environ["LOCAL_RANK"])
        else:
            local_rank = torch.cuda.current_device() if backend == "nccl" else 0
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, fsdp, backend=backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- rank 0 decides, everyone follows
    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its result (or its one-line error) to every rank."""
        if self.world == 1:
            return fn()
        box: list[Any] = [None, None]
        if self.is_main:
            try:
                box[0] = fn()
            except (LorakitError, ValueError, OSError) as err:
                box[1] = str(err)
        dist.broadcast_object_list(box, src=0)
        if box[1] is not None:
            raise LorakitError(box[1])
        return box[0]  # type: ignore[no-any-return]

    # ---- data
    def part(self, rows: list[T]) -> list[T]:
        """Rank k's contiguous slice of a global batch (sizes differ by at most one; may be empty)."""
        lo, hi = len(rows) * self.rank // self.world, len(rows) * (self.rank + 1) // self.world
        return rows[lo:hi]

    def batch(
        self, examples: list[TokenizedExample], rows: list[int], pad_id: int, pad_to_multiple_of: int = 1
    ) -> dict[str, torch.Tensor]:
        """This rank's slice of the global batch ``rows``, collated.

        A short last batch of an epoch may leave a rank nothing: it then runs one row with every label masked
        (zero loss, zero gradient) so that it still joins the gradient all-reduce.
        """
        mine = self.part(rows)
        if not mine:
            batch = collate([examples[rows[0]]], pad_id, pad_to_multiple_of)
            return {**batch, "labels": torch.full_like(batch["labels"], IGNORE_INDEX)}
        return collate([examples[i] for i in mine], pad_id, pad_to_multiple_of)

    def sum(self, *values: float) -> list[float]:
        """Element-wise sum over ranks (float64, so token counts stay exact)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device())  # (len(values),)
        dist.all_reduce(t)
        return t.tolist()

    def device(self) -> torch.device:
        """Where this rank computes: its GPU (cuda:LOCAL_RANK) under NCCL, else the CPU."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    # ---- model
    def wrap(self, model: nn.Module, share_prefix: bool = True) -> nn.Module:
        """The module to call for a batch's loss sum: the model's LossModule, under DDP or FSDP2 when N > 1.

        Call it after the adapter is initialised (the same on every rank). ``share_prefix``: run a prompt prefix
        shared by a batch's rows once (``lorakit.loss.token_loss_sum``).
        """
        if self.world == 1:
            return LossModule(model, share_prefix)
        model.to(self.device())
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            layers = decoder_layers(model)
            if not layers:
                raise LorakitError("--fsdp: cannot find the decoder layers of this model to shard")
            sharded = [fully_shard(layer) for layer in layers]
            # The shared-prefix path runs each layer twice per forward; FSDP2 hooks expect one call per forward.
            loss = LossModule(model, share_prefix=False)
            root = fully_shard(loss)  # the same object, its class swapped for an FSDP one
            for m in [*sharded, root]:
                m.set_gradient_divide_factor(1.0)  # sum: each rank's loss is already over the global count
                m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
            return loss
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(
            LossModule(model, share_prefix), device_ids=[self.local_rank] if self.backend == "nccl" else None
        )
        ddp.register_comm_hook(self, _sum_and_count)
        return ddp

    def loss_scaler(self, dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
        """fp16 training's dynamic loss scaling: the loss is multiplied by 2^16 before the backward (small gradients
        stay above fp16's underflow), the gradients are divided back before clipping, a step whose gradients
        overflow is skipped and the scale halved, and the scale doubles after 2000 good steps. None for bf16 and
        fp32, whose exponent range is fp32's. Under FSDP2 each rank holds a shard of the gradients, so an overflow
        found on one rank is shared with all (``ShardedGradScaler``)."""
        if not needs_loss_scaling(dtype):
            return None
        if self.fsdp and self.world > 1:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            return ShardedGradScaler(device.type)
        return torch.amp.GradScaler(device.type)

    def accumulate(self, module: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """Within a step's micro-batches, communicate gradients only after the last one."""
        if self.world == 1 or sync:
            if self.fsdp:
                module.set_requires_gradient_sync(True)  # type: ignore[operator]
            return contextlib.nullcontext()
        if self.fsdp:
            module.set_requires_gradient_sync(False)  # type: ignore[operator]
            return contextlib.nullcontext()
        return module.no_sync()  # type: ignore[operator]

    # ---- checkpoints
    def checkpoint_extra(self, rng: Any) -> dict[str, Any]:
        """What a checkpoint records about the processes: their number and each rank's RNG state ``rng`` (a
        collective: every rank calls it, rank 0 writes it)."""
        if self.world == 1:
            return {}
        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, rng)
        return {"processes": self.world, "rng_ranks": states}

    def resumed(self, folder: Path, extra: dict[str, Any]) -> Any:
        """Check a checkpoint was written by as many processes as now run; this rank's RNG state (None alone)."""
        if extra.get("processes", 1) != self.world:
            raise LorakitError(
                f"{folder}: written by {extra.get('processes', 1)} processes, resumed with "
                f"{self.world}; the global batch would change (--batch-size is per process)"
            )
        return extra["rng_ranks"][self.rank] if self.world > 1 else None

    # FSDP2 holds each rank's shard of every parameter and of its AdamW moments. A checkpoint holds them whole,
    # in the form a single process writes, so it is the same folder as any other run's: the trained tensors are
    # gathered onto rank 0's CPU with torch.distributed.checkpoint's full-state calls (the frozen base never
    # leaves its shards), and on resume rank 0's whole tensors are broadcast and each rank keeps its shard.
    @property
    def sharded(self) -> bool:
        return self.fsdp and self.world > 1

    def trained_weights(self, forward: nn.Module) -> dict[str, torch.Tensor] | None:
        """FSDP2: the trainable parameters whole, on rank 0's CPU, by their names in the model (a collective; the
        other ranks get {}). None otherwise: the model's own parameters are whole."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        whole = get_model_state_dict(forward, options=options)  # {} on ranks other than 0
        return {k.removeprefix(INNER): v for k, v in whole.items() if isinstance(v, torch.Tensor)}

    def load_trained(self, forward: nn.Module, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        """Copy ``weights`` (whole tensors by their names in ``model``, as ``trained_weights`` gives them) into
        ``model`` (which ``forward`` wraps). Under FSDP2, a collective: rank 0's ``weights`` are broadcast and each
        rank keeps its shard (the others' ``weights`` are not read)."""
        if not self.sharded:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in weights.items():
                    params[name].copy_(value)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        set_model_state_dict(forward, {INNER + k: v for k, v in weights.items()}, options=options)

    def optimizer_state(self, forward: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``optimizer.state_dict()``: parameters numbered in the optimiser's order. Under FSDP2 the moments are
        gathered whole onto rank 0's CPU (a collective; the other ranks get {})."""
        if not self.sharded or not optimizer.state:  # no moments before the first step: nothing is sharded
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        whole = get_optimizer_state_dict(forward, optimizer, options=options)  # keyed by parameter names
        if not whole:
            return {}
        groups: list[dict[str, Any]] = whole["param_groups"]  # type: ignore[assignment]
        number = {name: i for i, name in enumerate(name for g in groups for name in g["params"])}
        return {
            "state": {number[name]: value for name, value in whole["state"].items()},  # type: ignore[union-attr]
            "param_groups": [{**g, "params": [number[name] for name in g["params"]]} for g in groups],
        }

    def load_optimizer_state(self, forward: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """``optimizer.load_state_dict(state)``. Under FSDP2, a collective: rank 0's ``state`` (whole, as
        ``optimizer_state`` gives it) is broadcast and each rank keeps its shard (the others' is not read)."""
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        # A state from before the first step has no moments (DCP would make some with a step of lr 0): load it
        # as it is, on every rank.
        box = [state if self.is_main and not state.get("state") else None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            optimizer.load_state_dict(box[0])
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        by_name: dict[str, Any] = {}
        if self.is_main:
            names = {param: name for name, param in forward.named_parameters()}
            order = [names[p] for g in optimizer.param_groups for p in g["params"]]
            by_name = {
                "state": {order[i]: value for i, value in state["state"].items()},
                "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
            }
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_optimizer_state_dict(forward, optimizer, by_name, options=options)

    @contextlib.contextmanager
    def full_params(self, module: nn.Module) -> Iterator[None]:
        """FSDP2: every parameter gathered whole (on every rank) for the block, e.g. to save the adapter."""
        if not self.fsdp or self.world == 1:
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        sharded = [m for m in module.modules() if isinstance(m, FSDPModule)]
        for m in sharded:
            m.unshard()
        try:
            yield
        finally:
            for m in sharded:
                m.reshard()

    @property
    def evaluates(self) -> bool:
        """Rank 0 evaluates alone, except under FSDP2 where every forward needs every rank's shards."""
        return self.is_main or (self.fsdp and self.world > 1)

    def eval_module(self, forward: nn.Module) -> nn.Module:
        """What evaluation calls: DDP's inner module (no collectives, so rank 0 alone can run it)."""
        inner = getattr(forward, "module", None)
        return inner if isinstance(inner, LossModule) and not self.fsdp else forward

    def report_traffic(self, steps: int) -> None:
        """Log the gradient bytes DDP actually all-reduced per step (counted by its communication hook)."""
        if self.world > 1 and not self.fsdp and self.is_main and steps:
            tqdm.write(f"lorakit: all-reduced {self.bytes_reduced // steps:,} bytes of gradients per step (measured)")

    def describe(self, model: nn.Module, batch_size: int, grad_accum: int) -> str:
        """One log line: global batch and what a step communicates, next to what full fine-tuning would."""
        if self.world == 1:
            return (
                f"1 process; batch {batch_size} x {grad_accum} accumulation = {batch_size * grad_accum} examples/step"
            )
        named = list(model.named_parameters())  # tied weights once
        lora = sum(p.numel() * 4 for _, p in named if p.requires_grad)  # fp32 gradients
        full = sum(p.numel() * 4 for n, p in named if "lora_" not in n)  # every base weight trainable instead
        kind = "FSDP2 (base sharded), reduce-scatters" if self.fsdp else "DDP, all-reduces"
        return (
            f"{self.world} processes ({self.backend}); global batch {batch_size} x {self.world} processes x "
            f"{grad_accum} accumulation = {batch_size * self.world * grad_accum} examples/step; {kind} "
            f"{lora:,} bytes of adapter gradients per step (full fine-tuning would send {full:,})"
        )


def _sum_and_count(procs: Processes, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: all-reduce a gradient bucket with SUM and count its bytes."""
    buffer = bucket.buffer()  # (bucket numel,) flat gradients
    procs.bytes_reduced += buffer.numel() * buffer.element_size()
    work = dist.all_reduce(buffer, async_op=True)
    assert work is not None
    return work.get_future().then(lambda fut: fut.value()[0])


# DDP checks a hook's annotations against the classes themselves; ``from __future__ import annotations`` made them
# strings, so put the objects back.
_sum_and_count.__annotations__.update(bucket=dist.GradBucket, **{"return": torch.futures.Future[torch.Tensor]})
